"""The release's fusion weights (chincharles/u-emo models/attention_fusion.py at d251937) in our
modules: every variant gives the fused token the released formula gives, computed here
independently from the release-named tensors; exporting gives the release's tensors back exactly."""
import pytest
import torch
import torch.nn.functional as F

from uniemox.errors import UserError
from uniemox.models.fusion import build_fusion
from uniemox.models.fusion_release import from_release, release_variant, to_release

C, H, B = 16, 3, 5


def _release_weights(name, seed=0):
    """Random weights under the release's names and shapes, as its state_dict() has them."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.5

    def heads(out):
        return {f"W_{s}.{h}.{p}": r(out, C) if p == "weight" else r(out) for s in "ab" for h in range(H)
                for p in ("weight", "bias")}
    if name == "easy":  # AttentionFusion
        return {"linear.weight": r(C, C), "linear.bias": r(C), "bn.weight": 1 + r(C), "bn.bias": r(C)}
    if name == "weighted_sum":  # MultiHeadWeightedSumFusion
        return {"alpha": r(H, 1, C), "beta": r(H, 1, C), "layer_norm.weight": 1 + r(C), "layer_norm.bias": r(C),
                "bias": r(1, C)}
    if name == "dual_attention":  # MultiHeadAttentionFusion
        return dict(heads(1), bias=r(1, C))
    return dict(heads(C), **{"mlp.0.weight": r(C, C * H), "mlp.0.bias": r(C), "mlp.2.weight": r(C, C),
                             "mlp.2.bias": r(C), "gate.weight": r(C, C), "gate.bias": r(C), "bias": r(1, C)})


def _ln(x, w, b):
    return F.layer_norm(x, (C,), w, b, eps=1e-5)  # nn.LayerNorm's default, which the release uses


def _released(name, w, a, b):
    """The release's forward, written out from its module code."""
    if name == "easy":
        return F.elu(F.linear(_ln(a, w["bn.weight"], w["bn.bias"]) + _ln(b, w["bn.weight"], w["bn.bias"]),
                              w["linear.weight"], w["linear.bias"]))
    if name == "weighted_sum":
        total = sum(w["alpha"][h] * a + w["beta"][h] * b for h in range(H))
        return _ln(total, w["layer_norm.weight"], w["layer_norm.bias"]) + w["bias"]

    def head(h, side, x):
        return torch.softmax(F.linear(x, w[f"W_{side}.{h}.weight"], w[f"W_{side}.{h}.bias"]), dim=1) * x
    per_head = [head(h, "a", a) + head(h, "b", b) for h in range(H)]
    if name == "dual_attention":
        total = torch.stack(per_head).sum(0)
        return total * torch.sigmoid(total) + w["bias"]
    m = F.linear(F.relu(F.linear(torch.cat(per_head, dim=1), w["mlp.0.weight"], w["mlp.0.bias"])),
                 w["mlp.2.weight"], w["mlp.2.bias"])
    return F.relu(m * torch.sigmoid(F.linear(m, w["gate.weight"], w["gate.bias"]))) + w["bias"]


def _inputs():
    g = torch.Generator().manual_seed(1)
    # small spread: the LayerNorm eps (1e-5 here, 1e-6 in the ViT) then moves the result well past 1e-6
    return torch.randn(B, C, generator=g) * 0.01 + 0.2, torch.randn(B, C, generator=g) * 0.01 - 0.1


@pytest.mark.parametrize("name", ["easy", "weighted_sum", "dual_attention", "mlp_glu"])
def test_release_weights_give_the_released_token_and_export_back_exactly(name):
    weights = _release_weights(name)
    assert release_variant(weights) == name
    fusion = build_fusion(name, dim=C, heads=H)
    fusion.load_state_dict(from_release(fusion, weights), strict=True)
    a, b = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(fusion(a, b), _released(name, weights, a, b), rtol=0, atol=1e-6)
    back = to_release(fusion)
    assert set(back) == set(weights)
    assert all(torch.equal(back[k], weights[k]) for k in weights)


def test_our_own_names_pass_through_and_unreleased_variants_keep_them():
    fusion = build_fusion("bilinear", dim=C, rank=4)
    assert to_release(fusion).keys() == fusion.state_dict().keys()
    own = build_fusion("easy", dim=C).state_dict()
    assert release_variant(own) is None and from_release(build_fusion("easy", dim=C), own).keys() == own.keys()


def test_another_variant_or_head_count_is_refused():
    with pytest.raises(UserError, match="release's MultiHeadWeightedSumFusion .*fusion='weighted_sum'"):
        from_release(build_fusion("easy", dim=C), _release_weights("weighted_sum"))
    with pytest.raises(UserError, match="3 heads, the model's 2: build the model with fusion_heads=3"):
        from_release(build_fusion("mlp_glu", dim=C, heads=2), _release_weights("mlp_glu"))
