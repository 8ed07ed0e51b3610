"""Multi-head self-attention through one function with three backends.

* ``xformers``: ``xformers.ops.memory_efficient_attention`` (CUDA only: xformers has no CPU kernels)
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / efficient / math inside)
* ``math``: softmax(q k^T / sqrt(d)) v written out, the reference
* ``auto``: xformers on CUDA when importable, else sdpa.

Tensors use xformers' layout [B, N, H, Dh] so the qkv projection is split without a copy.
The backend chosen for each (request, device) is logged once (not while torch.compile traces).
"""
import functools
import logging
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

from uniemox.errors import UserError

logger = logging.getLogger(__name__)
ATTENTION_BACKENDS = ("auto", "xformers", "sdpa", "math")


@functools.lru_cache(maxsize=None)
def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # missing, or built against another torch: treat as absent
        return False
    return True


@functools.lru_cache(maxsize=None)
def _log_choice(requested: str, device_type: str, chosen: str) -> None:
    logger.info("attention backend: %s (requested %s, device %s)", chosen, requested, device_type)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise UserError(f"unknown attention backend {backend!r}; choose from {', '.join(ATTENTION_BACKENDS)}")
    chosen = backend
    if backend == "auto":
        chosen = "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    elif backend == "xformers" and (device.type != "cuda" or not xformers_available()):
        raise UserError("attention backend 'xformers' needs a CUDA device and an importable xformers "
                        "(pip install 'uniemox[gpu]'); use 'auto' or 'sdpa' here")
    if not torch.compiler.is_compiling():  # a log call in traced code is a graph break, every block
        _log_choice(backend, device.type, chosen)
    return chosen


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
          is_causal: bool = False) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attn_mask, is_causal=is_causal)
    return out.transpose(1, 2)


@torch.fx.wrap
@register_notrace_function  # a leaf for FX (timm's tracer): the backend depends on the device
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """q, k, v [B, N, H, Dh] -> [B, N, H, Dh], no mask, scale 1/sqrt(Dh)."""
    if torch.jit.is_scripting():  # TorchScript: SDPA (the dispatch is Python)
        return _sdpa(q, k, v)
    return _dispatch(q, k, v, backend)


def _dispatch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    chosen = resolve_backend(backend, q.device)
    if chosen == "xformers":
        import xformers.ops as xops
        return xops.memory_efficient_attention(q, k, v)
    if chosen == "sdpa":
        return _sdpa(q, k, v)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # -> [B, H, N, Dh]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    return (scores.float().softmax(dim=-1).to(v.dtype) @ v).transpose(1, 2)


class Attention(nn.Module):
    """timm/MAE key names: ``qkv`` (with bias) and ``proj``. Built by timm's ``Block`` (its
    ``attn_layer``), which passes its options: the ones MAE's ViT leaves off must be off here."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, qk_norm: bool = False,
                 scale_norm: bool = False, proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 norm_layer=None, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise UserError(f"width {dim} is not divisible by {num_heads} heads")
        if qk_norm or scale_norm or not proj_bias or attn_drop or proj_drop:
            raise UserError("the UniEmoX attention has no qk_norm / scale_norm / attention dropout and a proj bias")
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        if attn_mask is None and not is_causal:
            out = attention(q, k, v, self.backend)
        else:  # timm's masked calls (forward_features(attn_mask=...)): SDPA takes the mask
            out = _sdpa(q, k, v, attn_mask, is_causal)
        return self.proj(out.reshape(b, n, c))
