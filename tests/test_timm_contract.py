"""The encoders as timm models: the contract timm's own tests/test_models.py checks for its ViTs,
with this project's code, on every registered uniemox_* name but large/huge (the registered
width, heads and patch; depth 2 and small images keep it fast on a CPU)."""
import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from timm.optim import param_groups_layer_decay
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import uniemox.models.timm_models  # noqa: F401  (registers the names with timm)
from uniemox.models import list_models

NAMES = [n for n in list_models() if "large" not in n and "huge" not in n]
SMALL = dict(depth=2)


def _create(name, **kwargs):
    return timm.create_model(name, pretrained=False, **{**SMALL, **kwargs})


def _images(name, batch=2, size=None):
    patch = timm.create_model(name, pretrained=False, depth=1).patch_size
    return torch.randn(batch, 3, size or 4 * patch, size or 4 * patch)


def _fx(model, train=False):
    """timm's FX helper path: torchvision's feature extractor with timm's leaf functions/modules."""
    kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                  param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_every_parameter_gets_a_gradient(name):
    model = _create(name, num_classes=7).train()
    x = _images(name)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    plain = model(x)
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_config_features_head_and_classifier_reset(name):
    model = _create(name).eval()
    cfg = model.pretrained_cfg
    assert cfg["fixed_input_size"] is False and cfg["input_size"][0] == 3
    assert cfg["first_conv"] + ".weight" in model.state_dict()
    assert model.num_features == model.head_hidden_size == model.embed_dim > 0
    x = _images(name, batch=1)
    tokens = model.forward_features(x)
    assert tokens.shape == (1, 1 + (x.shape[-1] // model.patch_size) ** 2, model.num_features)
    pooled = model.forward_head(tokens, pre_logits=True)
    assert pooled.shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0 and torch.equal(model(x), pooled)
    model.reset_classifier(5, "")
    assert model.forward_head(tokens, pre_logits=True).shape == tokens.shape  # no pooling
    headless = _create(name, num_classes=0).eval()
    assert headless(x).shape == (1, headless.num_features)


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_and_fx_forward_backward(name):
    model = _create(name, num_classes=4).eval()
    x = _images(name, batch=1)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), want, rtol=1e-5, atol=1e-6)
        fx = _fx(model)
        assert torch.equal(next(iter(fx(x).values())), want)
        script_fx = torch.jit.script(fx)
        torch.testing.assert_close(next(iter(script_fx(x).values())), want, rtol=1e-5, atol=1e-6)
    train_fx = _fx(model.train(), train=True)
    out = next(iter(train_fx(_images(name)).values()))
    out.mean().backward()
    assert out.shape == (2, 4) and all(p.grad is not None for p in train_fx.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_and_features_only(name):
    model = _create(name, depth=3).eval()
    x = _images(name, batch=1)
    grid = x.shape[-1] // model.patch_size
    final, inter = model.forward_intermediates(x)
    assert torch.equal(final, model.forward_features(x))
    assert len(inter) == 3 and all(t.shape == (1, model.embed_dim, grid, grid) for t in inter)
    last = model.forward_intermediates(x, indices=[2], norm=True, output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(last[0], final[:, 1:])  # the last block, normed = the final tokens
    assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2  # the last 2
    features = _create(name, depth=3, features_only=True, out_indices=(0, 2)).eval()
    report = features.model.load_state_dict(model.state_dict(), strict=False)
    assert report.missing_keys == []  # the wrapper keeps the blocks up to the last index, no head
    maps = features(x)
    assert features.feature_info.channels() == [model.embed_dim] * 2
    assert features.feature_info.reduction() == [model.patch_size] * 2
    torch.testing.assert_close(maps[1], inter[2])


@pytest.mark.parametrize("name", NAMES)
def test_any_resolution(name):
    """dynamic_img_size (the timm entrypoint's default): another grid gets the sin-cos table of
    that grid, the table a model built for that size has; img_size= builds for one size."""
    model = _create(name, num_classes=3).eval()
    patch = model.patch_size
    wide = torch.randn(1, 3, 3 * patch, 5 * patch)
    fixed = _create(name, num_classes=3, img_size=(3 * patch, 5 * patch), dynamic_img_size=False).eval()
    assert fixed.pretrained_cfg["input_size"] == (3, 3 * patch, 5 * patch) and fixed.pretrained_cfg["fixed_input_size"]
    fixed.load_state_dict({k: v for k, v in model.state_dict().items() if k != "pos_embed"}, strict=False)
    torch.testing.assert_close(model(wide), fixed(wide), rtol=1e-5, atol=1e-6)
    with pytest.raises(AssertionError, match="Input height"):
        fixed(_images(name, batch=1))  # a fixed model says so


def test_groups_decay_and_matcher():
    model = _create("uniemox_vit_tiny_patch16", num_classes=2)
    assert model.no_weight_decay() >= {"pos_embed", "cls_token"} and "pos_embed" not in dict(model.named_parameters())
    groups = param_groups_layer_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay(), layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for p in g["params"] for n, q in model.named_parameters() if p is q}
    assert scale["cls_token"] == scale["patch_embed.proj.weight"] == 0.5 ** 3
    assert scale["blocks.1.mlp.fc1.weight"] == 0.5 and scale["fc_norm.weight"] == scale["head.bias"] == 1.0
    coarse = model.group_matcher(coarse=True)
    assert set(coarse) == {"stem", "blocks"}
