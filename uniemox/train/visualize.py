"""Reconstruction grids: original / masked / reconstructed (visible patches pasted back)."""
from typing import Sequence

import torch
from torchvision.utils import make_grid, save_image

from uniemox.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from uniemox.kernels import patchify, unpatchify
from uniemox.kernels.constants import NORM_PIX_EPS


def _denorm(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x * s + m).clamp(0, 1)


@torch.no_grad()
def reconstruction_grid(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int,
                        norm_pix: bool, rows: int = 4) -> torch.Tensor:
    """[3, H', W'] image in [0, 1]: one row per sample, columns original | masked | reconstruction."""
    imgs, pred, mask = imgs[:rows].float().cpu(), pred[:rows].float().cpu(), mask[:rows].float().cpu()
    target = patchify(imgs, patch_size)
    if norm_pix:  # the decoder predicts normalised patches: undo with each patch's own statistics
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
    keep = (1 - mask).unsqueeze(-1)
    masked = unpatchify(target * keep, patch_size)
    pasted = unpatchify(target * keep + pred * (1 - keep), patch_size)
    tiles = torch.stack([_denorm(imgs), _denorm(masked) * unpatchify(keep.expand_as(target), patch_size),
                         _denorm(pasted)], dim=1).flatten(0, 1)
    return make_grid(tiles, nrow=3, padding=2, pad_value=1.0)


def save_grid(grid: torch.Tensor, path: str) -> None:
    save_image(grid, path)
