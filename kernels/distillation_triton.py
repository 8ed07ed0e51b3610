"""Fused distillation losses (Triton), same contract as ``distillation.py``.

One kernel, one program per BLOCK_B rows of the batch. With g, o, t the unit student,
teacher-image and teacher-text rows (x / max(|x|, eps)), a_i = t g_i and c_i = t o_i
(length M, B x M over the batch), it writes per row

    cos(g_i, o_i)  and  cos(a_i, c_i) = a_i . c_i / (max(|a_i|, eps) max(|c_i|, eps)),

streaming t in BLOCK_M x BLOCK_C tiles, so A and C are never stored; the losses are
1 - the row means. When the student needs a gradient, the same program also writes the
gradient of each loss w.r.t. the raw student row (the backward then only scales them):

    d L2 / d g_i = -o_i / B
    d L1 / d g_i = -(1/B) sum_j u_ij t_j,   u_i = (c_i/|c_i| - cos_i a_i/|a_i|) / |a_i|
    d / d s_i    = (d/dg_i - g_i (g_i . d/dg_i)) / |s_i|      (norm clamped: d/dg_i / eps)

The sum over j is accumulated in the output rows themselves (owned by this program).
Only the student gets a gradient: the teacher is frozen.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl

from .constants import COSINE_EPS as EPS

BLOCK_B = 16    # rows per program (tl.dot needs >= 16)
BLOCK_M = 32    # text rows per tile
BLOCK_C = 32    # embedding columns per tile (64 spills 1.4 KB per thread on sm_90a; 32 none)
# 3 x TF32 on tensor cores: products as accurate as fp32 (bf16 inputs are exact in TF32);
# the interpreter computes dots in fp32 whatever this says
DOT_PRECISION = "tf32x3"


@triton.jit
def _raw_dots(s_ptr, o_ptr, t_ptr, rows, row_ok, j, j_ok, C,
              BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
              PRECISION: tl.constexpr):
    """s t^T and o t^T for one [BLOCK_B, BLOCK_M] tile (raw rows) and |t_j|^2."""
    a = tl.zeros([BLOCK_B, BLOCK_M], dtype=tl.float32)
    c = tl.zeros([BLOCK_B, BLOCK_M], dtype=tl.float32)
    tt = tl.zeros([BLOCK_M], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        k = c0 + tl.arange(0, BLOCK_C)
        k_ok = k < C
        rk = row_ok[:, None] & k_ok[None, :]
        s = tl.load(s_ptr + rows[:, None] * C + k[None, :], mask=rk, other=0.0).to(tl.float32)
        o = tl.load(o_ptr + rows[:, None] * C + k[None, :], mask=rk, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + j[:, None] * C + k[None, :], mask=j_ok[:, None] & k_ok[None, :],
                    other=0.0).to(tl.float32)
        a = tl.dot(s, tl.trans(t), a, input_precision=PRECISION)
        c = tl.dot(o, tl.trans(t), c, input_precision=PRECISION)
        tt += tl.sum(t * t, axis=1)
    return a, c, tt


@triton.jit
def _distill_kernel(s_ptr, o_ptr, t_ptr, rows_ptr, gsim_ptr, gcon_ptr, B, M, C, eps,
                    NEED_GRAD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows = rows.to(tl.int64)
    # pass 1: student and teacher-image norms, cos(g, o)
    ss = tl.zeros([BLOCK_B], dtype=tl.float32)
    oo = tl.zeros([BLOCK_B], dtype=tl.float32)
    so = tl.zeros([BLOCK_B], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        k = c0 + tl.arange(0, BLOCK_C)
        rk = row_ok[:, None] & (k[None, :] < C)
        s = tl.load(s_ptr + rows[:, None] * C + k[None, :], mask=rk, other=0.0).to(tl.float32)
        o = tl.load(o_ptr + rows[:, None] * C + k[None, :], mask=rk, other=0.0).to(tl.float32)
        ss += tl.sum(s * s, axis=1)
        oo += tl.sum(o * o, axis=1)
        so += tl.sum(s * o, axis=1)
    s_norm = tl.sqrt_rn(ss)
    rg = 1.0 / tl.maximum(s_norm, eps)
    ro = 1.0 / tl.maximum(tl.sqrt_rn(oo), eps)
    cos_go = so * rg * ro
    # pass 2: rows of A = g t^T and C = o t^T, tile by tile
    saa = tl.zeros([BLOCK_B], dtype=tl.float32)
    scc = tl.zeros([BLOCK_B], dtype=tl.float32)
    sac = tl.zeros([BLOCK_B], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        j = m0 + tl.arange(0, BLOCK_M)
        a, c, tt = _raw_dots(s_ptr, o_ptr, t_ptr, rows, row_ok, j, j < M, C,
                             BLOCK_B, BLOCK_M, BLOCK_C, PRECISION)
        rt = 1.0 / tl.maximum(tl.sqrt_rn(tt), eps)
        a = a * rg[:, None] * rt[None, :]
        c = c * ro[:, None] * rt[None, :]
        saa += tl.sum(a * a, axis=1)
        scc += tl.sum(c * c, axis=1)
        sac += tl.sum(a * c, axis=1)
    a_norm = tl.sqrt_rn(saa)
    ra = 1.0 / tl.maximum(a_norm, eps)
    rc = 1.0 / tl.maximum(tl.sqrt_rn(scc), eps)
    cos_ac = sac * ra * rc
    tl.store(rows_ptr + rows, cos_go, mask=row_ok)
    tl.store(rows_ptr + B + rows, cos_ac, mask=row_ok)

    if NEED_GRAD:
        # pass 3: v_i = sum_j u_ij t_j / |t_j| into gcon (rows owned by this program)
        for c0 in range(0, C, BLOCK_C):
            k = c0 + tl.arange(0, BLOCK_C)
            rk = row_ok[:, None] & (k[None, :] < C)
            tl.store(gcon_ptr + rows[:, None] * C + k[None, :],
                     tl.zeros([BLOCK_B, BLOCK_C], dtype=tl.float32), mask=rk)
        tl.debug_barrier()
        a_live = (a_norm >= eps).to(tl.float32)  # a clamped norm passes no gradient
        g_dot_v = tl.zeros([BLOCK_B], dtype=tl.float32)
        for m0 in range(0, M, BLOCK_M):
            j = m0 + tl.arange(0, BLOCK_M)
            j_ok = j < M
            a, c, tt = _raw_dots(s_ptr, o_ptr, t_ptr, rows, row_ok, j, j_ok, C,
                                 BLOCK_B, BLOCK_M, BLOCK_C, PRECISION)
            rt = 1.0 / tl.maximum(tl.sqrt_rn(tt), eps)
            a = a * rg[:, None] * rt[None, :]
            c = c * ro[:, None] * rt[None, :]
            u = (c * rc[:, None] - (a_live * cos_ac * ra)[:, None] * a) * ra[:, None]
            u = tl.where(j_ok[None, :], u, 0.0)
            g_dot_v += tl.sum(u * a, axis=1)  # g_i . v_i, as a_ij = g_i . t_j / |t_j|
            w = u * rt[None, :]
            for c0 in range(0, C, BLOCK_C):
                k = c0 + tl.arange(0, BLOCK_C)
                k_ok = k < C
                t = tl.load(t_ptr + j[:, None] * C + k[None, :], mask=j_ok[:, None] & k_ok[None, :],
                            other=0.0).to(tl.float32)
                acc_ptr = gcon_ptr + rows[:, None] * C + k[None, :]
                rk = row_ok[:, None] & k_ok[None, :]
                acc = tl.load(acc_ptr, mask=rk, other=0.0)
                tl.store(acc_ptr, tl.dot(w, t, acc, input_precision=PRECISION), mask=rk)
            tl.debug_barrier()
        # pass 4: through the normalisation of s, with the -1/B of the means
        g_live = (s_norm >= eps).to(tl.float32)
        scale = -rg / B
        for c0 in range(0, C, BLOCK_C):
            k = c0 + tl.arange(0, BLOCK_C)
            rk = row_ok[:, None] & (k[None, :] < C)
            offs = rows[:, None] * C + k[None, :]
            g = tl.load(s_ptr + offs, mask=rk, other=0.0).to(tl.float32) * rg[:, None]
            o = tl.load(o_ptr + offs, mask=rk, other=0.0).to(tl.float32) * ro[:, None]
            v = tl.load(gcon_ptr + offs, mask=rk, other=0.0)
            gsim = (o - (g_live * cos_go)[:, None] * g) * scale[:, None]
            gcon = (v - (g_live * g_dot_v)[:, None] * g) * scale[:, None]
            tl.store(gsim_ptr + offs, gsim, mask=rk)
            tl.store(gcon_ptr + offs, gcon, mask=rk)


def _distill_outputs(student: torch.Tensor, need_grad: bool):
    """(cosines [2, B], the student-gradient rows [2, B, C] or an empty tensor), fp32."""
    batch, width = student.shape
    return (student.new_empty(2, batch, dtype=torch.float32),
            student.new_empty((2, batch, width) if need_grad else (0,), dtype=torch.float32))


# A torch.library custom op: one opaque node under torch.compile (no graph break, nothing traced
# inside); the fake implementation gives the compiler the output shapes.
@torch.library.custom_op("uniemox::distillation_losses", mutates_args=())
def _distillation_op(student: torch.Tensor, teacher_image: torch.Tensor, teacher_text: torch.Tensor,
                     need_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (losses [2] = (L2, L1), fp32; the gradient rows of both losses when ``need_grad``)."""
    batch, width = student.shape
    cosines, grads = _distill_outputs(student, need_grad)
    _distill_kernel[(triton.cdiv(batch, BLOCK_B),)](
        student.contiguous(), teacher_image.contiguous(), teacher_text.contiguous(), cosines,
        grads[0] if need_grad else cosines, grads[1] if need_grad else cosines,
        batch, teacher_text.shape[0], width, EPS, NEED_GRAD=need_grad, BLOCK_B=BLOCK_B,
        BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C, PRECISION=DOT_PRECISION)
    return 1.0 - cosines.mean(dim=1), grads


@_distillation_op.register_fake
def _(student, teacher_image, teacher_text, need_grad):
    return student.new_empty(2, dtype=torch.float32), _distill_outputs(student, need_grad)[1]


def _distillation_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.student_dtype = inputs[0].dtype
    ctx.mark_non_differentiable(output[1])


def _distillation_backward(ctx, grad_losses, _grad_rows):
    if not ctx.needs_input_grad[0]:
        return None, None, None, None
    (grads,) = ctx.saved_tensors
    grad_student = torch.einsum("k,kbc->bc", grad_losses.float(), grads)
    return grad_student.to(ctx.student_dtype), None, None, None


_distillation_op.register_autograd(_distillation_backward, setup_context=_distillation_setup)


def distillation_losses_triton(student: torch.Tensor, teacher_image: torch.Tensor,
                               teacher_text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fused ``distillation_losses_reference``: (similarity L2, contrastive L1), fp32 scalars.
    student, teacher_image [B, C]; teacher_text [M, C] (M may exceed B)."""
    if student.dim() != 2 or teacher_image.shape != student.shape:
        raise ValueError(f"student and teacher_image must both be [B, C], got "
                         f"{list(student.shape)} and {list(teacher_image.shape)}")
    if teacher_text.dim() != 2 or teacher_text.shape[1] != student.shape[1]:
        raise ValueError(f"teacher_text must be [M, {student.shape[1]}], got {list(teacher_text.shape)}")
    if torch.is_grad_enabled() and (teacher_image.requires_grad or teacher_text.requires_grad):
        raise ValueError("the fused distillation kernel differentiates the student only; "
                         "pass detached teacher embeddings (or use impl='torch')")
    if len({student.device, teacher_image.device, teacher_text.device}) > 1:
        raise ValueError("student and teacher embeddings must be on one device")
    # forward runs with grad mode off: decide here whether the gradient rows are needed
    need_grad = torch.is_grad_enabled() and student.requires_grad
    similarity, contrastive = _distillation_op(student, teacher_image, teacher_text, need_grad)[0].unbind(0)
    return similarity, contrastive
