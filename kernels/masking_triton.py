"""Fused MAE random masking and its inverse (Triton), same contract as ``masking.py``.

random masking, one kernel: each program takes BLOCK_I tokens of one sample and computes
their rank in the stable ascending sort of the noise by counting,

    rank_i = #{j : noise_j < noise_i  or  (noise_j == noise_i and j < i)}   (O(L^2) per row),

which is ``ids_restore``; ``mask = rank >= len_keep``; a kept token is copied, with its
position embedding added, straight to row ``rank`` of the output (no argsort, no gather
index tensor, removed tokens never read). Backward gathers ``grad_kept`` by the same ranks.

unmask: ``out_i = (kept[rank_i] if rank_i < K else mask_token) + pos_i``; backward scatters
the kept rows' gradient and sums the removed rows' gradient into per-program partials for
the mask token. Noise must be finite (NaN has no rank).
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

BLOCK_I = 32   # tokens per program
BLOCK_J = 64   # noise values compared per step of the rank count
# embedding columns per step; at 128 the forward kernel spills registers on sm_90a (ptxas:
# 254 registers, 48 B spilled, 4 warps); 64 spills nothing (python -m uniemox.kernels.aot)
MAX_BLOCK_D = 64


def _block_d(dim: int) -> int:
    return min(MAX_BLOCK_D, triton.next_power_of_2(dim))


@triton.jit
def _mask_fwd_kernel(x_ptr, pos_ptr, noise_ptr, kept_ptr, mask_ptr, ids_ptr, L, D, K,
                     HAS_POS: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    valid_i = i < L
    noise_i = tl.load(noise_ptr + n * L + i, mask=valid_i, other=0.0)
    rank = tl.zeros([BLOCK_I], dtype=tl.int32)
    for j0 in range(0, L, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        valid_j = j < L
        noise_j = tl.load(noise_ptr + n * L + j, mask=valid_j, other=0.0)
        before = (noise_j[None, :] < noise_i[:, None]) | \
                 ((noise_j[None, :] == noise_i[:, None]) & (j[None, :] < i[:, None]))
        rank += tl.sum((before & valid_j[None, :]).to(tl.int32), axis=1)
    tl.store(ids_ptr + n * L + i, rank.to(tl.int64), mask=valid_i)
    # via fp32: the interpreter's int -> bf16 cast reinterprets bits
    removed = (rank >= K).to(tl.float32)
    tl.store(mask_ptr + n * L + i, removed.to(mask_ptr.dtype.element_ty), mask=valid_i)

    keep = valid_i & (rank < K)
    src = x_ptr + n * L * D + i.to(tl.int64)[:, None] * D
    dst = kept_ptr + n * K * D + rank.to(tl.int64)[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        io = keep[:, None] & (d[None, :] < D)
        v = tl.load(src + d[None, :], mask=io, other=0.0).to(tl.float32)
        if HAS_POS:
            v += tl.load(pos_ptr + i[:, None] * D + d[None, :], mask=io, other=0.0).to(tl.float32)
        tl.store(dst + d[None, :], v.to(kept_ptr.dtype.element_ty), mask=io)


@triton.jit
def _mask_bwd_kernel(grad_kept_ptr, ids_ptr, grad_x_ptr, L, D, K,
                     BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad_x[n, i] = grad_kept[n, rank_i] for kept tokens, 0 for removed ones."""
    n = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    valid_i = i < L
    rank = tl.load(ids_ptr + n * L + i, mask=valid_i, other=0)
    keep = valid_i & (rank < K)
    src = grad_kept_ptr + n * K * D + rank[:, None] * D
    dst = grad_x_ptr + n * L * D + i.to(tl.int64)[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d[None, :] < D
        g = tl.load(src + d[None, :], mask=keep[:, None] & dm, other=0.0)
        tl.store(dst + d[None, :], g.to(grad_x_ptr.dtype.element_ty), mask=valid_i[:, None] & dm)


@triton.jit
def _unmask_fwd_kernel(kept_ptr, token_ptr, pos_ptr, ids_ptr, out_ptr, L, D, K,
                       HAS_POS: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    valid_i = i < L
    rank = tl.load(ids_ptr + n * L + i, mask=valid_i, other=0)
    keep = valid_i & (rank < K)
    src = kept_ptr + n * K * D + rank[:, None] * D
    dst = out_ptr + n * L * D + i.to(tl.int64)[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < D
        v = tl.load(src + d[None, :], mask=keep[:, None] & dm[None, :], other=0.0).to(tl.float32)
        token = tl.load(token_ptr + d, mask=dm, other=0.0).to(tl.float32)
        v = tl.where(keep[:, None], v, token[None, :])
        if HAS_POS:
            io = valid_i[:, None] & dm[None, :]
            v += tl.load(pos_ptr + i[:, None] * D + d[None, :], mask=io, other=0.0).to(tl.float32)
        tl.store(dst + d[None, :], v.to(out_ptr.dtype.element_ty), mask=valid_i[:, None] & dm[None, :])


@triton.jit
def _unmask_bwd_kernel(grad_out_ptr, ids_ptr, grad_kept_ptr, token_part_ptr, L, D, K,
                       BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    """Scatter kept rows' gradient back to ``grad_kept``; write this program's sum of the
    removed rows' gradient (the mask token's share) to ``token_part[program]``."""
    n = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    i = blk * BLOCK_I + tl.arange(0, BLOCK_I)
    valid_i = i < L
    rank = tl.load(ids_ptr + n * L + i, mask=valid_i, other=0)
    keep = valid_i & (rank < K)
    removed = valid_i & (rank >= K)
    src = grad_out_ptr + n * L * D + i.to(tl.int64)[:, None] * D
    dst = grad_kept_ptr + n * K * D + rank[:, None] * D
    part = token_part_ptr + (n * tl.num_programs(1) + blk) * D
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < D
        g = tl.load(src + d[None, :], mask=valid_i[:, None] & dm[None, :], other=0.0)
        tl.store(dst + d[None, :], g.to(grad_kept_ptr.dtype.element_ty), mask=keep[:, None] & dm[None, :])
        token_sum = tl.sum(tl.where(removed[:, None], g.to(tl.float32), 0.0), axis=0)
        tl.store(part + d, token_sum, mask=dm)


def _out_dtype(x: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.dtype:
    # the reference adds pos_embed with PyTorch's type promotion
    return x.dtype if pos is None else torch.result_type(x, pos)


def _pos_grad(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """pos_embed is shared by the batch: its gradient is the batch sum (accumulated in fp32)."""
    return grad.sum(dim=0, dtype=torch.float32).to(dtype)


# Each kernel launch is a torch.library custom op: torch.compile keeps it as one opaque node of
# the graph (no graph break, nothing traced inside), and the fake implementations (the output
# allocations, shared with the real ones) give the compiler shapes and dtypes.
def _masking_outputs(x: torch.Tensor, len_keep: int, pos: Optional[torch.Tensor]):
    n, length, dim = x.shape
    dtype = _out_dtype(x, pos)
    return (x.new_empty(n, len_keep, dim, dtype=dtype), x.new_empty(n, length, dtype=dtype),
            x.new_empty(n, length, dtype=torch.int64))


@torch.library.custom_op("uniemox::random_masking", mutates_args=())
def _random_masking_op(x: torch.Tensor, noise: torch.Tensor, len_keep: int, pos: Optional[torch.Tensor]
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, L, D], noise [N, L], pos [L, D] or None -> (kept, mask, ids_restore)."""
    n, length, dim = x.shape
    kept, mask, ids_restore = _masking_outputs(x, len_keep, pos)
    x = x.contiguous()
    pos = None if pos is None else pos.contiguous()
    _mask_fwd_kernel[(n, triton.cdiv(length, BLOCK_I))](
        x, x if pos is None else pos, noise.contiguous(), kept, mask, ids_restore, length, dim, len_keep,
        HAS_POS=pos is not None, BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J, BLOCK_D=_block_d(dim))
    return kept, mask, ids_restore


@_random_masking_op.register_fake
def _(x, noise, len_keep, pos):
    return _masking_outputs(x, len_keep, pos)


@torch.library.custom_op("uniemox::random_masking_backward", mutates_args=())
def _random_masking_backward_op(grad_kept: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """-> the gradient of every token [N, L, D] (zeros for removed ones), in grad_kept's dtype."""
    n, length = ids_restore.shape
    len_keep, dim = grad_kept.shape[1], grad_kept.shape[2]
    grad = grad_kept.new_empty(n, length, dim)
    _mask_bwd_kernel[(n, triton.cdiv(length, BLOCK_I))](
        grad_kept.contiguous(), ids_restore.contiguous(), grad, length, dim, len_keep,
        BLOCK_I=BLOCK_I, BLOCK_D=_block_d(dim))
    return grad


@_random_masking_backward_op.register_fake
def _(grad_kept, ids_restore):
    return grad_kept.new_empty(*ids_restore.shape, grad_kept.shape[2])


def _random_masking_setup(ctx, inputs, output):
    x, _, _, pos = inputs
    ctx.save_for_backward(output[2])
    ctx.x_dtype, ctx.pos_dtype = x.dtype, None if pos is None else pos.dtype
    ctx.mark_non_differentiable(output[1], output[2])


def _random_masking_backward(ctx, grad_kept, _grad_mask, _grad_ids):
    (ids_restore,) = ctx.saved_tensors
    need_x, _, _, need_pos = ctx.needs_input_grad
    # full gradient in the promoted dtype; split into x's and pos_embed's dtypes
    grad = _random_masking_backward_op(grad_kept, ids_restore)
    return (grad.to(ctx.x_dtype) if need_x else None, None, None,
            _pos_grad(grad, ctx.pos_dtype) if need_pos else None)


_random_masking_op.register_autograd(_random_masking_backward, setup_context=_random_masking_setup)


@torch.library.custom_op("uniemox::unmask_tokens", mutates_args=())
def _unmask_tokens_op(kept: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
                      pos: Optional[torch.Tensor]) -> torch.Tensor:
    """kept [N, K, D], mask_token [D], ids_restore [N, L] int64, pos [L, D] or None -> [N, L, D]."""
    n, len_keep, dim = kept.shape
    length = ids_restore.shape[1]
    kept = kept.contiguous()
    # the reference casts the token to kept's dtype before adding pos_embed
    token = mask_token.to(kept.dtype).contiguous()
    pos = None if pos is None else pos.contiguous()
    out = kept.new_empty(n, length, dim, dtype=_out_dtype(kept, pos))
    _unmask_fwd_kernel[(n, triton.cdiv(length, BLOCK_I))](
        kept, token, kept if pos is None else pos, ids_restore.contiguous(), out, length, dim, len_keep,
        HAS_POS=pos is not None, BLOCK_I=BLOCK_I, BLOCK_D=_block_d(dim))
    return out


@_unmask_tokens_op.register_fake
def _(kept, mask_token, ids_restore, pos):
    return kept.new_empty(kept.shape[0], ids_restore.shape[1], kept.shape[2], dtype=_out_dtype(kept, pos))


def _unmask_backward_outputs(grad_out: torch.Tensor, len_keep: int, kept_dtype: torch.dtype):
    n, length, dim = grad_out.shape
    blocks = triton.cdiv(length, BLOCK_I)
    return (grad_out.new_empty(n, len_keep, dim, dtype=kept_dtype),
            grad_out.new_empty(n * blocks, dim, dtype=torch.float32))


@torch.library.custom_op("uniemox::unmask_tokens_backward", mutates_args=())
def _unmask_tokens_backward_op(grad_out: torch.Tensor, ids_restore: torch.Tensor, len_keep: int,
                               kept_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (grad_kept [N, K, D], per-program fp32 partial sums of the mask token's gradient)."""
    n, length, dim = grad_out.shape
    grad_kept, token_part = _unmask_backward_outputs(grad_out, len_keep, kept_dtype)
    _unmask_bwd_kernel[(n, triton.cdiv(length, BLOCK_I))](
        grad_out.contiguous(), ids_restore.contiguous(), grad_kept, token_part, length, dim, len_keep,
        BLOCK_I=BLOCK_I, BLOCK_D=_block_d(dim))
    return grad_kept, token_part


@_unmask_tokens_backward_op.register_fake
def _(grad_out, ids_restore, len_keep, kept_dtype):
    return _unmask_backward_outputs(grad_out, len_keep, kept_dtype)


def _unmask_setup(ctx, inputs, output):
    kept, mask_token, ids_restore, pos = inputs
    ctx.save_for_backward(ids_restore)
    ctx.len_keep, ctx.kept_dtype, ctx.token_dtype = kept.shape[1], kept.dtype, mask_token.dtype
    ctx.pos_dtype = None if pos is None else pos.dtype


def _unmask_backward(ctx, grad_out):
    (ids_restore,) = ctx.saved_tensors
    need_kept, need_token, _, need_pos = ctx.needs_input_grad
    grad_kept, token_part = _unmask_tokens_backward_op(grad_out, ids_restore, ctx.len_keep, ctx.kept_dtype)
    grad_token = token_part.sum(dim=0).to(ctx.token_dtype) if need_token else None
    grad_pos = _pos_grad(grad_out, ctx.pos_dtype) if need_pos else None
    return grad_kept if need_kept else None, grad_token, None, grad_pos


_unmask_tokens_op.register_autograd(_unmask_backward, setup_context=_unmask_setup)


def _check_same_device(*tensors: Optional[torch.Tensor]) -> None:
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")


def random_masking_triton(x: torch.Tensor, noise: torch.Tensor, len_keep: int,
                          pos_embed: Optional[torch.Tensor] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused ``random_masking_reference``: (kept [N, K, D], mask [N, L], ids_restore [N, L])."""
    n, length, dim = x.shape
    if noise.shape != (n, length):
        raise ValueError(f"noise must be [{n}, {length}], got {list(noise.shape)}")
    if not 0 <= len_keep <= length:
        raise ValueError(f"len_keep must be in [0, {length}], got {len_keep}")
    _check_same_device(x, noise, pos_embed)
    pos = None if pos_embed is None else pos_embed.reshape(length, dim)
    return _random_masking_op(x, noise, int(len_keep), pos)


def unmask_tokens_triton(kept: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
                         pos_embed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused ``unmask_tokens_reference``: kept [N, K, D] -> [N, L, D]. ``ids_restore`` must be a
    per-row permutation of 0..L-1 (as random masking returns it)."""
    if ids_restore.shape[0] != kept.shape[0] or ids_restore.shape[1] < kept.shape[1]:
        raise ValueError(f"ids_restore {list(ids_restore.shape)} does not fit kept {list(kept.shape)}")
    if mask_token.numel() != kept.shape[2]:
        raise ValueError(f"mask_token has {mask_token.numel()} values, kept rows have {kept.shape[2]}")
    _check_same_device(kept, mask_token, ids_restore, pos_embed)
    dim = kept.shape[2]
    pos = None if pos_embed is None else pos_embed.reshape(ids_restore.shape[1], dim)
    return _unmask_tokens_op(kept, mask_token.reshape(dim), ids_restore.to(torch.int64), pos)
