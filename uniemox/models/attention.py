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

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """q, k, v [B, N, H, Dh] -> [B, N, H, Dh], no mask, scale 1/sqrt(Dh)."""
    chosen = resolve_backend(backend, q.device)
    if chosen == "xformers":
        import xformers.ops as xops
        return xops.memory_efficient_attention(q, k, v)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # -> [B, H, N, Dh]
    if chosen == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        out = scores.float().softmax(dim=-1).to(v.dtype) @ v
    return out.transpose(1, 2)


class Attention(nn.Module):
    """timm/MAE key names: ``qkv`` (with bias) and ``proj``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise UserError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        return self.proj(attention(q, k, v, self.backend).reshape(b, n, c))
