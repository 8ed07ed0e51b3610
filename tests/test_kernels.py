"""Every Triton kernel against its PyTorch reference, forward and backward, under the Triton
interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1 before triton loads).

Tolerances, per dtype:
* selections (kept tokens, mask, ids_restore) and pure copies/gathers in fp32: exact;
* fp32 arithmetic (losses, sums over the batch): rtol 1e-5, atol 1e-6 x the largest value
  (the kernels sum in a different order; everything is fp32);
* losses from bf16 inputs: as fp32 (both sides upcast the same bf16 values and compute in
  fp32);
* bf16 outputs computed in fp32 (kept + pos, gradients): one bf16 ulp, rtol 2^-7. The GPU
  rounds fp32 -> bf16 to nearest; the interpreter truncates, so one ulp is the honest bound.
Every test checks that the kernel's custom op (uniemox::...) produced the result, so a silent fall
back to the reference fails.
"""
import pytest
import torch

from uniemox.kernels import (distillation_losses, masked_reconstruction_loss, random_masking,
                             resolve_impl, unmask_tokens)

DTYPES = [torch.float32, torch.bfloat16]
BF16_RTOL = 2.0 ** -7


def fused_node(out: torch.Tensor, op: str):
    """The autograd node of the custom op ``uniemox::op`` that made ``out`` (directly, or through
    the view that splits the distillation op's two losses), else None."""
    nodes = [out.grad_fn] + [n for n, _ in getattr(out.grad_fn, "next_functions", ())]
    name = f"GeneratedBackwardFor_uniemox_{op}_default"
    return next((n for n in nodes if getattr(getattr(n, "_forward_cls", None), "__name__", "") == name), None)


def assert_fused(out: torch.Tensor, op: str) -> None:
    assert fused_node(out, op) is not None, f"expected the Triton kernel (uniemox::{op}), got {out.grad_fn}"


def assert_near(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                exact_fp32: bool = False) -> None:
    """Tolerance of the module docstring for a tensor computed in fp32 and stored as ``dtype``."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = expected.float().abs().max().item() or 1.0
    if dtype == torch.bfloat16:
        rtol, atol = BF16_RTOL, 1e-6 * scale
    elif exact_fp32:
        rtol, atol = 0.0, 0.0
    else:
        rtol, atol = 1e-5, 1e-6 * scale
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol)


def _noise(n: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, length, generator=gen)
    noise[:, 1::5] = noise[:, ::5][:, : noise[:, 1::5].shape[1]]  # ties: broken by index
    return noise


# (batch, tokens, width): batch 1; L = 49 (patch 32 on 224 / 7x7) and 196, not multiples of
# the 32-token block; D not a multiple of the column block
MASK_SHAPES = [(1, 49, 48), (3, 16, 64), (2, 196, 40)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("shape", MASK_SHAPES)
@pytest.mark.parametrize("with_pos", [True, False])
def test_random_masking_matches_reference(dtype, ratio, shape, with_pos):
    n, length, dim = shape
    len_keep = int(length * (1 - ratio))
    gen = torch.Generator().manual_seed(n * length + dim)
    x = torch.randn(n, length, dim, generator=gen).to(dtype)
    pos = torch.randn(1, length, dim, generator=gen).to(dtype) if with_pos else None
    noise = _noise(n, length, seed=dim)
    grad_kept = torch.randn(n, len_keep, dim, generator=gen).to(dtype)

    results = {}
    for impl in ("torch", "triton"):
        xi = x.clone().requires_grad_()
        pi = pos.clone().requires_grad_() if with_pos else None
        kept, mask, ids_restore = random_masking(xi, noise, len_keep, pi, impl=impl)
        grads = torch.autograd.grad(kept, [xi] + ([pi] if with_pos else []), grad_kept)
        results[impl] = (kept, mask, ids_restore, grads)
    kept, mask, ids_restore, grads = results["triton"]
    ref_kept, ref_mask, ref_ids, ref_grads = results["torch"]
    assert_fused(kept, "random_masking")

    assert torch.equal(ids_restore, ref_ids) and ids_restore.dtype == torch.int64
    assert torch.equal(mask, ref_mask) and mask.dtype == ref_mask.dtype
    assert int(mask.sum()) == n * (length - len_keep)
    # a pure gather without pos_embed; with it one fp32 add rounded to dtype
    assert_near(kept, ref_kept, dtype, exact_fp32=True)
    assert torch.equal(grads[0], ref_grads[0])  # grad_x: a scatter, exact in any dtype
    if with_pos:
        assert_near(grads[1], ref_grads[1], dtype)  # batch sum


def test_random_masking_promotes_like_the_reference():
    """bf16 tokens + fp32 position embeddings give fp32 outputs, as x + pos_embed does."""
    x = torch.randn(2, 16, 32, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.randn(1, 16, 32)
    kept, mask, _ = random_masking(x, _noise(2, 16, 0), 4, pos, impl="triton")
    ref_kept, ref_mask, _ = random_masking(x, _noise(2, 16, 0), 4, pos, impl="torch")
    assert kept.dtype == ref_kept.dtype == torch.float32 and mask.dtype == ref_mask.dtype
    assert torch.equal(kept, ref_kept)
    (grad,) = torch.autograd.grad(kept.sum(), x)
    assert grad.dtype == torch.bfloat16 and int(grad.float().sum()) == 2 * 4 * 32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_unmask_tokens_matches_reference(dtype, ratio, shape):
    n, length, dim = shape
    len_keep = int(length * (1 - ratio))
    gen = torch.Generator().manual_seed(7 * length + dim)
    kept = torch.randn(n, len_keep, dim, generator=gen).to(dtype)
    token = torch.randn(1, 1, dim, generator=gen).to(dtype)
    pos = torch.randn(1, length, dim, generator=gen).to(dtype)
    ids_restore = torch.argsort(torch.argsort(_noise(n, length, seed=length), dim=1, stable=True),
                                dim=1, stable=True)
    grad_out = torch.randn(n, length, dim, generator=gen).to(dtype)

    results = {}
    for impl in ("torch", "triton"):
        inputs = [t.clone().requires_grad_() for t in (kept, token, pos)]
        out = unmask_tokens(inputs[0], inputs[1], ids_restore, inputs[2], impl=impl)
        results[impl] = (out, torch.autograd.grad(out, inputs, grad_out))
    (out, grads), (ref_out, ref_grads) = results["triton"], results["torch"]
    assert_fused(out, "unmask_tokens")
    assert_near(out, ref_out, dtype)
    assert torch.equal(grads[0], ref_grads[0])  # grad_kept: a gather, exact
    assert_near(grads[1], ref_grads[1], dtype)  # mask token: sum over removed tokens
    assert_near(grads[2], ref_grads[2], dtype)  # pos_embed: sum over the batch


def test_unmask_without_pos_is_an_exact_inverse():
    x = torch.randn(2, 49, 24, requires_grad=True)
    kept, mask, ids_restore = random_masking(x, _noise(2, 49, 3), 12, impl="triton")
    out = unmask_tokens(kept, torch.zeros(24), ids_restore, impl="triton")
    assert_fused(out, "unmask_tokens")
    assert torch.equal(out, x.detach() * (1 - mask).unsqueeze(-1))


# (batch, image H x W, patch): patch 14 and 16, batch 1, a non-square image
RECON_CASES = [(1, (28, 28), 14), (3, (32, 32), 16), (2, (28, 42), 14), (4, (48, 32), 16)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("case", RECON_CASES)
def test_reconstruction_loss_matches_reference(dtype, norm_pix, ratio, case):
    n, (h, w), p = case
    length = (h // p) * (w // p)
    gen = torch.Generator().manual_seed(h * w + p)
    imgs = (torch.randn(n, 3, h, w, generator=gen) * 2 + 0.5).to(dtype)
    pred = torch.randn(n, length, p * p * 3, generator=gen).to(dtype)
    _, mask, _ = random_masking(torch.zeros(n, length, 1), _noise(n, length, p),
                                max(1, int(length * (1 - ratio))), impl="torch")
    mask = mask.to(dtype)

    results = {}
    for impl in ("torch", "triton"):
        pi = pred.clone().requires_grad_()
        loss = masked_reconstruction_loss(imgs, pi, mask, p, norm_pix=norm_pix, impl=impl)
        results[impl] = (loss, torch.autograd.grad(loss * 3.0, pi)[0])
    (loss, grad), (ref_loss, ref_grad) = results["triton"], results["torch"]
    assert_fused(loss, "masked_reconstruction_loss")
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_near(loss, ref_loss, torch.float32)  # fp32 on both sides whatever the inputs
    assert_near(grad, ref_grad, dtype)
    assert torch.all(grad[mask == 0] == 0)


def test_reconstruction_skips_kept_patches():
    """A non-finite prediction on a kept patch does not reach the fused loss (documented)."""
    imgs = torch.randn(1, 3, 28, 28)
    pred = torch.randn(1, 4, 588, requires_grad=True)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    with torch.no_grad():
        finite = masked_reconstruction_loss(imgs, pred, mask, 14, impl="torch")
        pred[0, 1] = float("nan")
    loss = masked_reconstruction_loss(imgs, pred, mask, 14, impl="triton")
    torch.testing.assert_close(loss, finite, rtol=1e-5, atol=0)


# (B, M, C): batch 1, M > B (global-batch variant), C not a multiple of the column tile
DISTILL_CASES = [(1, 1, 32), (4, 4, 40), (5, 37, 64), (18, 18, 96), (3, 70, 48)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DISTILL_CASES)
def test_distillation_losses_match_reference(dtype, case):
    batch, rows_m, width = case
    gen = torch.Generator().manual_seed(batch * rows_m + width)
    student = torch.randn(batch, width, generator=gen).to(dtype)
    image = torch.randn(batch, width, generator=gen).to(dtype)
    text = torch.randn(rows_m, width, generator=gen).to(dtype)
    if batch > 3:
        student[2] = 0  # the clamped norm of an all-zero row
    weights = (0.7, 1.3)  # distinct upstream gradients for the two losses

    results = {}
    for impl in ("torch", "triton"):
        si = student.clone().requires_grad_()
        sim, con = distillation_losses(si, image, text, impl=impl)
        (grad,) = torch.autograd.grad(weights[0] * sim + weights[1] * con, si)
        results[impl] = (sim, con, grad)
    (sim, con, grad), (ref_sim, ref_con, ref_grad) = results["triton"], results["torch"]
    assert_fused(sim, "distillation_losses")
    assert_fused(con, "distillation_losses")
    assert sim.dtype == con.dtype == torch.float32
    assert_near(sim, ref_sim, torch.float32)
    assert_near(con, ref_con, torch.float32)
    assert_near(grad, ref_grad, dtype)


def test_distillation_single_loss_gradient():
    """Only one of the two losses in the graph: the other's gradient is None in backward."""
    s = torch.randn(6, 32, requires_grad=True)
    o, t = torch.randn(6, 32), torch.randn(6, 32)
    (grad,) = torch.autograd.grad(distillation_losses(s, o, t, impl="triton")[1], s)
    (ref,) = torch.autograd.grad(distillation_losses(s, o, t, impl="torch")[1], s)
    assert_near(grad, ref, torch.float32)


def test_distillation_without_grad_matches():
    """No gradient wanted (evaluation): the kernel skips its gradient passes, same losses."""
    s, o, t = torch.randn(5, 40, requires_grad=True), torch.randn(5, 40), torch.randn(9, 40)
    with torch.no_grad():
        fused = torch.stack(distillation_losses(s, o, t, impl="triton"))
        ref = torch.stack(distillation_losses(s, o, t, impl="torch"))
    assert fused.grad_fn is None
    assert_near(fused, ref, torch.float32)


def test_distillation_refuses_teacher_gradients():
    s, o, t = torch.randn(2, 32), torch.randn(2, 32, requires_grad=True), torch.randn(2, 32)
    with pytest.raises(ValueError, match="student only"):
        distillation_losses(s, o, t, impl="triton")


def test_explicit_triton_never_falls_back(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        random_masking(torch.randn(1, 4, 8), torch.rand(1, 4), 2, impl="triton")
    with pytest.raises(ValueError, match="impl"):
        resolve_impl("fast", torch.device("cpu"))


def test_auto_uses_the_reference_on_cpu():
    assert resolve_impl("auto", torch.device("cpu")) == "torch"
    s = torch.randn(2, 32, requires_grad=True)
    sim, _ = distillation_losses(s, torch.randn(2, 32), torch.randn(2, 32), impl="auto")
    assert fused_node(sim, "distillation_losses") is None


@pytest.mark.parametrize("scale", [1e-10, 1e-18])
def test_distillation_clamped_norms(scale):
    """Rows whose norm is below eps: 1e-10 clamps |s_i|, 1e-18 also clamps |a_i| (the clamp
    passes no gradient through the norm). Compared row by row: these gradients are ~1/eps."""
    gen = torch.Generator().manual_seed(11)
    student = torch.randn(4, 40, generator=gen)
    student[1] *= scale
    image, text = torch.randn(4, 40, generator=gen), torch.randn(6, 40, generator=gen)
    losses, grads = [], []
    for impl in ("torch", "triton"):
        si = student.clone().requires_grad_()
        sim, con = distillation_losses(si, image, text, impl=impl)
        losses.append(torch.stack([sim, con]))
        grads.append(torch.autograd.grad(0.7 * sim + 1.3 * con, si)[0])
    assert_near(losses[1].detach(), losses[0].detach(), torch.float32)
    for row, ref_row in zip(*grads):
        assert_near(row, ref_row, torch.float32)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_model_same_with_either_impl(norm_pix):
    """End to end in the MAE model (non-contiguous decoder slice, fp32 position embeddings,
    a learned mask token): the fused path gives the reference's loss and parameter grads."""
    from uniemox.models import create_pretrainer
    torch.manual_seed(0)
    mae = create_pretrainer("uniemox_vit_tiny_patch16", img_size=32, depth=1, decoder_depth=1).model
    mae.norm_pix_loss = norm_pix
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 4)
    results = {}
    for impl in ("torch", "triton"):
        mae.kernel_impl = impl
        mae.zero_grad(set_to_none=True)
        loss, pred, mask = mae(imgs, mask_ratio=0.5, noise=noise)
        loss.backward()
        results[impl] = loss, {k: p.grad.clone() for k, p in mae.named_parameters() if p.grad is not None}
    (loss, grads), (ref_loss, ref_grads) = results["triton"], results["torch"]
    assert_fused(loss, "masked_reconstruction_loss")
    assert_near(loss, ref_loss, torch.float32)
    assert grads.keys() == ref_grads.keys() and "mask_token" in grads
    for name in grads:
        assert_near(grads[name], ref_grads[name], torch.float32)
