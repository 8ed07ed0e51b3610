"""MAE pixel reconstruction loss (docs/method.md#losses, L3) on the removed patches only."""
import torch

from .constants import NORM_PIX_EPS
from .dispatch import resolve_impl
from .patches import patchify


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     norm_pix: bool = False) -> torch.Tensor:
    """pred, target [N, L, p*p*3]; mask [N, L], 1 = removed.

    Per patch: mean squared error over its pixels (target optionally normalised per patch
    with its mean and unbiased variance, as MAE's norm_pix_loss); then
    sum(loss * mask) / sum(mask). Computed in fp32 whatever the input dtype.
    """
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum()


def masked_reconstruction_loss_reference(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                                         patch_size: int, norm_pix: bool = False) -> torch.Tensor:
    """imgs [N, 3, H, W]: ``masked_patch_mse`` against the patchified images."""
    return masked_patch_mse(pred, patchify(imgs, patch_size), mask, norm_pix)


def masked_reconstruction_loss(imgs, pred, mask, patch_size: int, norm_pix: bool = False,
                               impl: str = "auto") -> torch.Tensor:
    if resolve_impl(impl, pred.device) == "triton":
        from .reconstruction_triton import masked_reconstruction_loss_triton
        return masked_reconstruction_loss_triton(imgs, pred, mask, patch_size, norm_pix)
    return masked_reconstruction_loss_reference(imgs, pred, mask, patch_size, norm_pix)
