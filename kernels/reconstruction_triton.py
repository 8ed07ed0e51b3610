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


class _MaskedReconstructionLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, imgs, pred, mask, patch_size, norm_pix):
        n, _, h, w = imgs.shape
        length, per_patch = pred.shape[1], pred.shape[2]
        imgs, pred, mask = imgs.contiguous(), pred.contiguous(), mask.contiguous()
        losses = torch.empty(n * length, device=pred.device, dtype=torch.float32)
        meta = _launch_meta(patch_size, norm_pix)
        _recon_fwd_kernel[(n * length,)](imgs, pred, mask, losses, length, w // patch_size,
                                         h, w, per_patch, **meta)
        mask_sum = mask.sum(dtype=torch.float32)
        ctx.save_for_backward(imgs, pred, mask, mask_sum)
        ctx.meta = meta
        return losses.sum() / mask_sum

    @staticmethod
    def backward(ctx, grad_loss):
        imgs, pred, mask, mask_sum = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None, None, None
        n, _, h, w = imgs.shape
        length, per_patch = pred.shape[1], pred.shape[2]
        grad_pred = torch.empty_like(pred)
        _recon_bwd_kernel[(n * length,)](imgs, pred, mask, grad_loss.contiguous(), mask_sum,
                                         grad_pred, length, w // ctx.meta["PATCH"], h, w,
                                         per_patch, **ctx.meta)
        return None, grad_pred, None, None, None


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
    return _MaskedReconstructionLoss.apply(imgs, pred, mask, int(patch_size), bool(norm_pix))
