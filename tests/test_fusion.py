"""Fusion variants of docs/method.md#fusion: shapes, gradients, formula against a by-hand computation."""
import pytest
import torch
import torch.nn.functional as F

from uniemox.errors import UserError
from uniemox.models.fusion import LN_EPS, build_fusion, list_fusions

DIM, HEADS, BATCH = 16, 3, 5


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # Different scales and offsets for a and b so LayerNorm and the mixing matter.
    alpha = torch.randn(BATCH, DIM, generator=g) * 2.0 + 0.5
    beta = torch.randn(BATCH, DIM, generator=g) * 0.5 - 1.0
    return alpha.requires_grad_(), beta.requires_grad_()


def _build(name: str):
    torch.manual_seed(1)
    return build_fusion(name, dim=DIM, heads=HEADS, rank=4)


def _ln(x, norm):
    return F.layer_norm(x, (DIM,), norm.weight, norm.bias, LN_EPS)


def _perturbed(m):
    """Move every parameter off its init (LayerNorms off (1, 0), bilinear's U off zero) so a
    formula check also sees the affine norms and the bilinear term."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return m


# --- independent computations from the modules' parameters -----------------------------

def _ref_easy(m, a, b):
    return F.elu(F.linear(_ln(a, m.norm) + _ln(b, m.norm), m.proj.weight, m.proj.bias))


def _ref_weighted_sum(m, a, b):
    total = sum(m.weight_a[h, 0] * a + m.weight_b[h, 0] * b for h in range(HEADS))
    return _ln(total, m.norm) + m.eps_bias


def _ref_dual_attention(m, a, b):
    total = 0
    for h in range(HEADS):
        sa = F.linear(a, m.score_a.weight[h:h + 1], m.score_a.bias[h:h + 1])  # [B, 1]
        sb = F.linear(b, m.score_b.weight[h:h + 1], m.score_b.bias[h:h + 1])
        total = total + torch.softmax(sa, dim=1) * a + torch.softmax(sb, dim=1) * b
    return total * torch.sigmoid(total) + m.eps_bias


def _ref_mlp_glu(m, a, b):
    heads = []
    for h in range(HEADS):
        rows = slice(h * DIM, (h + 1) * DIM)
        wa = torch.softmax(F.linear(a, m.proj_a.weight[rows], m.proj_a.bias[rows]), dim=1)
        wb = torch.softmax(F.linear(b, m.proj_b.weight[rows], m.proj_b.bias[rows]), dim=1)
        heads.append(wa * a + wb * b)
    first, second = m.mlp[0], m.mlp[2]
    hidden = torch.relu(torch.cat(heads, dim=1) @ first.weight.T + first.bias)
    mm = hidden @ second.weight.T + second.bias
    gate = torch.sigmoid(mm @ m.gate.weight.T + m.gate.bias)
    return torch.relu(mm * gate) + m.eps_bias


def _ref_bilinear(m, a, b):
    an, bn = _ln(a, m.norm), _ln(b, m.norm)
    pooled = (an @ m.proj_a.T) * (bn @ m.proj_b.T)
    return _ln(an + bn + pooled @ m.out, m.out_norm)


REFERENCES = {
    "easy": _ref_easy,
    "weighted_sum": _ref_weighted_sum,
    "dual_attention": _ref_dual_attention,
    "mlp_glu": _ref_mlp_glu,
    "bilinear": _ref_bilinear,
    "none": lambda m, a, b: a,
}


def test_registry_lists_every_variant():
    assert list_fusions() == ["easy", "weighted_sum", "dual_attention", "mlp_glu",
                              "bilinear", "none"]
    assert set(REFERENCES) == set(list_fusions())


@pytest.mark.parametrize("name", list_fusions())
def test_shape_and_formula(name):
    m = _perturbed(_build(name))
    a, b = _inputs()
    out = m(a, b)
    assert out.shape == (BATCH, DIM) and out.dtype == torch.float32
    torch.testing.assert_close(out, REFERENCES[name](m, a, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list_fusions())
def test_output_depends_on_inputs_as_documented(name):
    m = _perturbed(_build(name))
    a, b = _inputs()
    other_b = _inputs(seed=7)[1]
    changed = not torch.allclose(m(a, b), m(a, other_b))
    assert changed == m.uses_beta  # only `none` ignores the person token


@pytest.mark.parametrize("name", ["easy", "weighted_sum", "mlp_glu", "bilinear"])
def test_gradients_reach_every_parameter(name):
    m = _perturbed(_build(name))
    a, b = _inputs()
    weights = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(3))
    (m(a, b) * weights).sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_dual_attention_reduces_to_swish_of_scaled_sum_and_its_scores_never_learn():
    m = _build("dual_attention")
    a, b = _inputs()
    out = m(a, b)
    total = HEADS * (a + b)
    torch.testing.assert_close(out, F.silu(total) + m.eps_bias, rtol=1e-5, atol=1e-6)
    weights = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(3))
    (out * weights).sum().backward()
    for layer in (m.score_a, m.score_b):
        for p in layer.parameters():  # in the graph, but the size-1 softmax kills the grad
            assert p.grad is not None and torch.all(p.grad == 0)
    assert m.eps_bias.grad.abs().sum() > 0 and a.grad.abs().sum() > 0


def test_bilinear_starts_at_the_normalised_sum_and_then_learns_its_factors():
    m = _build("bilinear")
    a, b = _inputs()
    out = m(a, b)
    torch.testing.assert_close(out, _ln(_ln(a, m.norm) + _ln(b, m.norm), m.out_norm))
    weights = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(3))
    (out * weights).sum().backward()
    assert m.out.grad.abs().sum() > 0  # U learns first ...
    assert torch.all(m.proj_a.grad == 0) and torch.all(m.proj_b.grad == 0)
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    m.zero_grad()
    (m(a, b) * weights).sum().backward()  # ... then P and Q get gradient
    assert m.proj_a.grad.abs().sum() > 0 and m.proj_b.grad.abs().sum() > 0


def test_easy_init_is_xavier_with_zero_bias():
    m = build_fusion("easy", dim=512)
    bound = (6.0 / (512 + 512)) ** 0.5
    assert torch.all(m.proj.bias == 0)
    assert m.proj.weight.abs().max() <= bound and m.proj.weight.abs().max() > 0.9 * bound


@pytest.mark.parametrize("name", list_fusions())
def test_deterministic(name):
    a, b = _inputs()
    first, second = _build(name), _build(name)
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)
    with torch.no_grad():
        assert torch.equal(first(a, b), first(a, b))
        assert torch.equal(first(a, b), second(a, b))


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list_fusions())
def test_bf16_autocast_is_finite_and_close_to_fp32(name, input_dtype):
    # Under autocast alpha and beta arrive in bf16 (decoder_embed is a Linear): try both.
    m = _perturbed(_build(name))
    a, b = _inputs()
    with torch.no_grad():
        ref = m(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(a.to(input_dtype), b.to(input_dtype))
    assert out.shape == (BATCH, DIM) and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    out.float().square().mean().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError) as err:
        build_fusion("attention")
    for name in list_fusions():
        assert name in str(err.value)


@pytest.mark.parametrize("kwargs", [{"dim": 0}, {"heads": -1}, {"rank": 0}, {"dim": 8.0}])
def test_bad_sizes_are_user_errors(kwargs):
    with pytest.raises(UserError):
        build_fusion("easy", **kwargs)
