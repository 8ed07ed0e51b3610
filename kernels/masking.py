"""MAE random masking: keep the ``len_keep`` patches with the smallest noise, per sample.

Conventions (MAE / HF ViTMAE): ``noise`` [N, L]; ``mask`` [N, L] with 1 = removed;
``ids_restore`` [N, L] undoes the shuffle. Sorting is stable, so ties break by index and
every implementation selects the same tokens.
"""
from typing import Optional, Tuple

import torch

from .dispatch import resolve_impl


def random_masking_reference(x: torch.Tensor, noise: torch.Tensor, len_keep: int,
                             pos_embed: Optional[torch.Tensor] = None
                             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, L, D] patch embeddings (+ pos_embed [L, D] when given) -> (kept [N, K, D], mask, ids_restore)."""
    n, length, dim = x.shape
    if pos_embed is not None:
        x = x + pos_embed.reshape(1, length, dim)
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = (ids_restore >= len_keep).to(x.dtype)
    return kept, mask, ids_restore


def unmask_tokens_reference(kept: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
                            pos_embed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Inverse of the shuffle for the decoder: kept [N, K, D] -> [N, L, D] with ``mask_token``
    at removed positions (+ pos_embed [L, D] when given)."""
    n, k, dim = kept.shape
    length = ids_restore.shape[1]
    filler = mask_token.reshape(1, 1, dim).to(kept.dtype).expand(n, length - k, dim)
    shuffled = torch.cat([kept, filler], dim=1)
    out = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
    if pos_embed is not None:
        out = out + pos_embed.reshape(1, length, dim)
    return out


def random_masking(x, noise, len_keep, pos_embed=None, impl: str = "auto"):
    if resolve_impl(impl, x.device) == "triton":
        from .masking_triton import random_masking_triton
        return random_masking_triton(x, noise, len_keep, pos_embed)
    return random_masking_reference(x, noise, len_keep, pos_embed)


def unmask_tokens(kept, mask_token, ids_restore, pos_embed=None, impl: str = "auto"):
    if resolve_impl(impl, kept.device) == "triton":
        from .masking_triton import unmask_tokens_triton
        return unmask_tokens_triton(kept, mask_token, ids_restore, pos_embed)
    return unmask_tokens_reference(kept, mask_token, ids_restore, pos_embed)
