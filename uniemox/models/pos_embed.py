"""Fixed 2-D sin-cos position embeddings (MAE): half the channels encode the column, half the row."""
from typing import Tuple, Union

import torch


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / torch.pow(10000.0, torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.reshape(-1, 1).double() * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_table(dim: int, height: int, width: int, cls_token: bool = True) -> torch.Tensor:
    """[1 + h*w, dim] (first row zeros, for the CLS token) or [h*w, dim], float32 (TorchScript-able:
    a dynamic-size encoder builds it in its forward)."""
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")
    # MAE's convention: the first half encodes the column (w), the second the row (h).
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, dim), emb], dim=0)
    return emb.float()


def sincos_pos_embed_2d(dim: int, grid_size: Union[int, Tuple[int, int]], cls_token: bool = True) -> torch.Tensor:
    """The table of a square grid (an int) or an (h, w) one.

    Built with torch ops so that it also works under a meta / CUDA default device."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    height, width = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    return sincos_table(dim, height, width, cls_token)
