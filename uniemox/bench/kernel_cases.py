"""What the kernel benchmark times: one case per kernel at ViT-B/16 shapes by default, each a
forward + backward closure over fixed inputs, with the analytic HBM traffic of the fused
kernel (each tensor counted once per pass that must touch it; small tensors re-read from
L2, such as pos_embed or the text rows, counted once).
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from uniemox.kernels import (distillation_losses, masked_reconstruction_loss, random_masking,
                             unmask_tokens)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
KERNELS = ("random_masking", "unmask_tokens", "reconstruction", "reconstruction_norm_pix",
           "distillation")

UNMASK_TOKENS_PER_PROGRAM = 32  # kernels/masking_triton.py BLOCK_I: one mask-token partial each
Tensors = Tuple[torch.Tensor, ...]


@dataclass
class KernelConfig:
    batch: int = 256
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    decoder_dim: int = 512
    mask_ratio: float = 0.75
    distill_dim: int = 512
    text_rows: Optional[int] = None  # None: the batch (the release's per-GPU variant)
    dtype: str = "bf16"              # activations; images stay fp32 as the data loader gives them

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def len_keep(self) -> int:
        return int(self.tokens * (1 - self.mask_ratio))  # as the MAE model computes it


@dataclass
class Case:
    name: str
    shapes: Dict[str, list]
    bytes_moved: int
    step: Callable[[str], Tuple[Tensors, Tensors]]  # impl -> (forward outputs, input grads)


def _nbytes(dtype: torch.dtype, *dims: int) -> int:
    return math.prod(dims) * torch.empty((), dtype=dtype).element_size()


def _masking_case(cfg: KernelConfig, dev: torch.device, gen: torch.Generator) -> Case:
    dt, n, length, dim, keep = DTYPES[cfg.dtype], cfg.batch, cfg.tokens, cfg.embed_dim, cfg.len_keep
    x = torch.randn(n, length, dim, device=dev, generator=gen).to(dt).requires_grad_()
    pos = torch.randn(1, length, dim, device=dev, generator=gen).to(dt)  # fixed sin-cos in MAE
    noise = torch.rand(n, length, device=dev, generator=gen)
    grad_kept = torch.randn(n, keep, dim, device=dev, generator=gen).to(dt)

    def step(impl: str):
        kept, mask, ids_restore = random_masking(x, noise, keep, pos, impl=impl)
        return (kept, mask, ids_restore), torch.autograd.grad(kept, x, grad_kept)

    moved = (_nbytes(torch.float32, n, length) + _nbytes(dt, n, keep, dim) * 2       # noise, kept x, kept
             + _nbytes(dt, length, dim) + _nbytes(dt, n, length)                      # pos, mask
             + _nbytes(torch.int64, n, length) * 2                                     # ids out, ids in
             + _nbytes(dt, n, keep, dim) + _nbytes(dt, n, length, dim))                # grad in, grad_x
    return Case("random_masking", {"x": [n, length, dim], "len_keep": [keep]}, moved, step)


def _unmask_case(cfg: KernelConfig, dev: torch.device, gen: torch.Generator) -> Case:
    dt, n, length, dim, keep = DTYPES[cfg.dtype], cfg.batch, cfg.tokens, cfg.decoder_dim, cfg.len_keep
    kept = torch.randn(n, keep, dim, device=dev, generator=gen).to(dt).requires_grad_()
    token = torch.randn(1, 1, dim, device=dev, generator=gen).to(dt).requires_grad_()
    pos = torch.randn(1, length, dim, device=dev, generator=gen).to(dt)
    noise = torch.rand(n, length, device=dev, generator=gen)
    ids_restore = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    grad_out = torch.randn(n, length, dim, device=dev, generator=gen).to(dt)

    def step(impl: str):
        out = unmask_tokens(kept, token, ids_restore, pos, impl=impl)
        return (out,), torch.autograd.grad(out, (kept, token), grad_out)

    blocks = math.ceil(length / UNMASK_TOKENS_PER_PROGRAM)
    moved = (_nbytes(torch.int64, n, length) * 2 + _nbytes(dt, n, keep, dim) * 2     # ids, kept, grad_kept
             + _nbytes(dt, length, dim) + _nbytes(dt, n, length, dim) * 2             # pos, out, grad_out
             + _nbytes(torch.float32, n * blocks, dim))                               # token partials
    return Case("unmask_tokens", {"kept": [n, keep, dim], "out": [n, length, dim]}, moved, step)


def _reconstruction_case(cfg: KernelConfig, dev: torch.device, gen: torch.Generator,
                         norm_pix: bool) -> Case:
    dt, n, p, length = DTYPES[cfg.dtype], cfg.batch, cfg.patch_size, cfg.tokens
    size, per_patch = cfg.image_size, cfg.patch_size ** 2 * 3
    imgs = torch.randn(n, 3, size, size, device=dev, generator=gen)
    pred = torch.randn(n, length, per_patch, device=dev, generator=gen).to(dt).requires_grad_()
    order = torch.rand(n, length, device=dev, generator=gen).argsort(dim=1).argsort(dim=1)
    mask = (order >= cfg.len_keep).to(dt)

    def step(impl: str):
        loss = masked_reconstruction_loss(imgs, pred, mask, p, norm_pix=norm_pix, impl=impl)
        return (loss,), torch.autograd.grad(loss, pred)

    removed = n * (length - cfg.len_keep)  # the fused kernels read removed patches only
    read = _nbytes(torch.float32, removed, per_patch) + _nbytes(dt, removed, per_patch)
    moved = (2 * read + _nbytes(dt, n, length, per_patch)                  # fwd, bwd, grad_pred
             + 2 * _nbytes(dt, n, length) + _nbytes(torch.float32, n, length))  # mask twice, partials
    name = "reconstruction_norm_pix" if norm_pix else "reconstruction"
    return Case(name, {"imgs": [n, 3, size, size], "pred": [n, length, per_patch]}, moved, step)


def _distillation_case(cfg: KernelConfig, dev: torch.device, gen: torch.Generator) -> Case:
    dt, n, width = DTYPES[cfg.dtype], cfg.batch, cfg.distill_dim
    rows = cfg.text_rows or n
    student = torch.randn(n, width, device=dev, generator=gen).to(dt).requires_grad_()
    image = torch.randn(n, width, device=dev, generator=gen).to(dt)
    text = torch.randn(rows, width, device=dev, generator=gen).to(dt)

    def step(impl: str):
        sim, con = distillation_losses(student, image, text, impl=impl)
        return (sim, con), torch.autograd.grad((sim, con), student)

    moved = (_nbytes(dt, 2 * n + rows, width)                            # student, image, text
             + 2 * 2 * _nbytes(torch.float32, n, width)                  # two gradients, out and in
             + _nbytes(dt, n, width))                                    # grad_student
    return Case("distillation", {"student": [n, width], "text": [rows, width]}, moved, step)


def build_cases(cfg: KernelConfig, dev: torch.device, names: Sequence[str]) -> List[Case]:
    gen = torch.Generator(device=dev).manual_seed(0)
    makers = {"random_masking": lambda: _masking_case(cfg, dev, gen),
              "unmask_tokens": lambda: _unmask_case(cfg, dev, gen),
              "reconstruction": lambda: _reconstruction_case(cfg, dev, gen, norm_pix=False),
              "reconstruction_norm_pix": lambda: _reconstruction_case(cfg, dev, gen, norm_pix=True),
              "distillation": lambda: _distillation_case(cfg, dev, gen)}
    return [makers[name]() for name in names]
