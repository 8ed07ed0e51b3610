"""Fused masked reconstruction loss (Triton), same contract as ``reconstruction.py``.

One program per patch reads the patch's pixels straight from the image (no patchified
target is materialised), in pred's order e = (py * p + px) * 3 + c, and, for norm_pix,
normalises them in registers:

    t = (t - mean) / sqrt(var + 1e-6),   var unbiased (divisor P - 1),  P = p * p * 3
    loss_patch = mask * sum_e (pred_e - t_e)^2 / P
    loss = sum(loss_patch) / sum(mask)

Patches with mask == 0 are not read at all. The backward kernel recomputes the target and
writes  d loss / d pred_e = grad * mask * 2 (pred_e - t_e) / (P * sum(mask))  (zeros for kept
patches). Everything is computed in fp32 whatever the input dtypes, as the reference.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl

from .constants import NORM_PIX_EPS

CHANNELS = 3
NORM_EPS = tl.constexpr(NORM_PIX_EPS)  # as the reference's (var + eps) ** 0.5


@triton.jit
def _patch_residual(img_ptr, pred_ptr, mask_ptr, pid, L, GW, H, W, P,
                    PATCH: tl.constexpr, BLOCK_P: tl.constexpr, NORM_PIX: tl.constexpr):
    """(pred - target) of patch ``pid`` = n * L + l in fp32, its mask value, and the lanes in use."""
    n = pid // L
    l = pid % L
    gy = l // GW
    gx = l % GW
    m = tl.load(mask_ptr + pid).to(tl.float32)
    e = tl.arange(0, BLOCK_P)
    live = e < P * (m != 0.0).to(tl.int32)  # no lane of a kept patch is live
    c = e % 3
    py = (e // 3) // PATCH
    px = (e // 3) % PATCH
    img_off = ((n * 3 + c) * H + gy * PATCH + py) * W + gx * PATCH + px
    t = tl.load(img_ptr + img_off, mask=live, other=0.0).to(tl.float32)
    if NORM_PIX:
        mean = tl.sum(t, axis=0) / P
        centred = tl.where(live, t - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / (P - 1)
        t = centred / tl.sqrt_rn(var + NORM_EPS)
    pred = tl.load(pred_ptr + pid * P + e, mask=live, other=0.0).to(tl.float32)
    return tl.where(live, pred - t, 0.0), m, e < P


@triton.jit
def _recon_fwd_kernel(img_ptr, pred_ptr, mask_ptr, loss_ptr, L, GW, H, W, P,
                      PATCH: tl.constexpr, BLOCK_P: tl.constexpr, NORM_PIX: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    diff, m, _ = _patch_residual(img_ptr, pred_ptr, mask_ptr, pid, L, GW, H, W, P,
                                 PATCH, BLOCK_P, NORM_PIX)
    tl.store(loss_ptr + pid, m * tl.sum(diff * diff, axis=0) / P)


@triton.jit
def _recon_bwd_kernel(img_ptr, pred_ptr, mask_ptr, grad_loss_ptr, mask_sum_ptr, grad_pred_ptr,
                      L, GW, H, W, P, PATCH: tl.constexpr, BLOCK_P: tl.constexpr,
                      NORM_PIX: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    diff, m, in_patch = _patch_residual(img_ptr, pred_ptr, mask_ptr, pid, L, GW, H, W, P,
                                        PATCH, BLOCK_P, NORM_PIX)
    # the scalars are read on the device: no host synchronisation in backward
    scale = tl.load(grad_loss_ptr).to(tl.float32) / tl.load(mask_sum_ptr)
    grad = diff * (2.0 * m * scale / P)
    offs = pid * P + tl.arange(0, BLOCK_P)
    tl.store(grad_pred_ptr + offs, grad.to(grad_pred_ptr.dtype.element_ty), mask=in_patch)


def _launch_meta(patch_size: int, norm_pix: bool) -> dict:
    block_p = triton.next_power_of_2(patch_size * patch_size * CHANNELS)
    return dict(PATCH=patch_size, BLOCK_P=block_p, NORM_PIX=bool(norm_pix),
                num_warps=4 if block_p <= 1024 else 8)


# The two launches are torch.library custom ops: one opaque node each under torch.compile.
@torch.library.custom_op("uniemox::masked_reconstruction_loss", mutates_args=())
def _reconstruction_op(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int,
                       norm_pix: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (the loss, sum(mask)), fp32 scalars."""
    n, _, h, w = imgs.shape
    length, per_patch = pred.shape[1], pred.shape[2]
    mask = mask.contiguous()
    losses = pred.new_empty(n * length, dtype=torch.float32)
    _recon_fwd_kernel[(n * length,)](imgs.contiguous(), pred.contiguous(), mask, losses, length,
                                     w // patch_size, h, w, per_patch, **_launch_meta(patch_size, norm_pix))
    mask_sum = mask.sum(dtype=torch.float32)
    return losses.sum() / mask_sum, mask_sum


@_reconstruction_op.register_fake
def _(imgs, pred, mask, patch_size, norm_pix):
    return pred.new_empty((), dtype=torch.float32), pred.new_empty((), dtype=torch.float32)


@torch.library.custom_op("uniemox::masked_reconstruction_loss_backward", mutates_args=())
def _reconstruction_backward_op(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                                grad_loss: torch.Tensor, mask_sum: torch.Tensor, patch_size: int,
                                norm_pix: bool) -> torch.Tensor:
    """-> d loss / d pred, zeros for kept patches."""
    n, _, h, w = imgs.shape
    length, per_patch = pred.shape[1], pred.shape[2]
    pred = pred.contiguous()
    grad_pred = torch.empty_like(pred)
    _recon_bwd_kernel[(n * length,)](imgs.contiguous(), pred, mask.contiguous(), grad_loss.contiguous(),
                                     mask_sum, grad_pred, length, w // patch_size, h, w, per_patch,
                                     **_launch_meta(patch_size, norm_pix))
    return grad_pred


@_reconstruction_backward_op.register_fake
def _(imgs, pred, mask, grad_loss, mask_sum, patch_size, norm_pix):
    return torch.empty_like(pred, memory_format=torch.contiguous_format)


def _reconstruction_setup(ctx, inputs, output):
    imgs, pred, mask, patch_size, norm_pix = inputs
    ctx.save_for_backward(imgs, pred, mask, output[1])
    ctx.patch_size, ctx.norm_pix = patch_size, norm_pix
    ctx.mark_non_differentiable(output[1])


def _reconstruction_backward(ctx, grad_loss, _grad_mask_sum):
    if not ctx.needs_input_grad[1]:
        return None, None, None, None, None
    imgs, pred, mask, mask_sum = ctx.saved_tensors
    grad_pred = _reconstruction_backward_op(imgs, pred, mask, grad_loss, mask_sum, ctx.patch_size, ctx.norm_pix)
    return None, grad_pred, None, None, None


_reconstruction_op.register_autograd(_reconstruction_backward, setup_context=_reconstruction_setup)


def masked_reconstruction_loss_triton(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                                      patch_size: int, norm_pix: bool = False) -> torch.Tensor:
    """Fused ``masked_reconstruction_loss_reference``: scalar fp32 loss; gradient for ``pred``
    only (the image is data, the mask a constant). Patches with mask 0 are skipped, so a
    non-finite prediction there does not reach the loss."""
    if imgs.dim() != 4 or imgs.shape[1] != CHANNELS:
        raise ValueError(f"imgs must be [N, {CHANNELS}, H, W], got {list(imgs.shape)}")
    n, _, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not a multiple of patch size {p}")
    length = (h // p) * (w // p)
    if pred.shape != (n, length, p * p * CHANNELS):
        raise ValueError(f"pred must be [{n}, {length}, {p * p * CHANNELS}], got {list(pred.shape)}")
    if mask.shape != (n, length):
        raise ValueError(f"mask must be [{n}, {length}], got {list(mask.shape)}")
    if len({imgs.device, pred.device, mask.device}) > 1:
        raise ValueError("imgs, pred and mask must be on one device")
    return _reconstruction_op(imgs, pred, mask, int(patch_size), bool(norm_pix))[0]
