import math

import pytest
import torch

from uniemox.kernels import patchify, unpatchify
from uniemox.models import create_encoder, create_pretrainer, get_arch, list_models, num_kept
from uniemox.models.pos_embed import sincos_pos_embed_2d


def tiny(**kw):
    kw = {"img_size": 32, "depth": 2, "decoder_depth": 1, **kw}
    return create_pretrainer("uniemox_vit_tiny_patch16", **kw)


@pytest.mark.parametrize("ratio,kept", [(0.9, 19), (0.75, 49), (0.5, 98)])
def test_mae_keep_rule(ratio, kept):
    assert num_kept(196, ratio) == kept == int(196 * (1 - ratio))


def test_masking_with_noise_is_deterministic_and_keeps_lowest_noise():
    torch.manual_seed(0)
    mae = create_pretrainer("uniemox_vit_tiny_patch16", depth=1, decoder_depth=1).model.eval()
    imgs = torch.randn(2, 3, 224, 224)
    noise = torch.rand(2, 196)
    lat1, mask1, restore1 = mae.forward_encoder(imgs, 0.9, noise)
    lat2, mask2, restore2 = mae.forward_encoder(imgs, 0.9, noise.clone())
    assert torch.equal(mask1, mask2) and torch.equal(restore1, restore2) and torch.equal(lat1, lat2)
    assert lat1.shape == (2, 1 + 19, 192)
    assert (mask1.sum(1) == 196 - 19).all()
    # the kept tokens are exactly the 19 with the smallest noise
    for i in range(2):
        expected = torch.zeros(196)
        expected[noise[i].argsort()[19:]] = 1
        assert torch.equal(mask1[i], expected)
    other, _, _ = mae.forward_encoder(imgs, 0.9, torch.rand(2, 196))
    assert not torch.equal(other, lat1)


def test_noise_shape_checked():
    mae = tiny().model
    with pytest.raises(ValueError, match="noise"):
        mae.forward_encoder(torch.randn(1, 3, 32, 32), 0.5, torch.rand(1, 5))


def test_sincos_table_matches_formula():
    dim, g = 16, 3
    table = sincos_pos_embed_2d(dim, g)
    assert table.shape == (1 + g * g, dim) and torch.all(table[0] == 0)
    row, col = 2, 1  # patch index row * g + col
    quarter = dim // 4
    omega = [1 / 10000 ** (i / quarter) for i in range(quarter)]
    expected = ([math.sin(col * w) for w in omega] + [math.cos(col * w) for w in omega]
                + [math.sin(row * w) for w in omega] + [math.cos(row * w) for w in omega])
    torch.testing.assert_close(table[1 + row * g + col], torch.tensor(expected), rtol=0, atol=1e-6)


def test_pos_embed_is_fixed_and_saved():
    m = tiny()
    params = dict(m.named_parameters())
    assert "model.pos_embed" not in params and "model.decoder_pos_embed" not in params
    assert all(p.requires_grad for p in params.values())
    state = m.model.state_dict()  # MAE's key names, in every checkpoint
    torch.testing.assert_close(state["pos_embed"][0], sincos_pos_embed_2d(192, 2))
    assert state["decoder_pos_embed"].shape == (1, 5, 256)


def test_patchify_roundtrip_and_layout():
    imgs = torch.randn(2, 3, 32, 32)
    p = patchify(imgs, 16)
    assert p.shape == (2, 4, 16 * 16 * 3)
    # patch 1 is row 0, column 1; inside it pixel (0, 0) channels come first
    torch.testing.assert_close(p[0, 1, :3], imgs[0, :, 0, 16])
    torch.testing.assert_close(unpatchify(p, 16), imgs)


def test_decoder_predicts_patches_not_cls():
    m = tiny()
    loss, pred, mask, cls_proj = m.mae(torch.randn(3, 3, 32, 32), 0.5)
    assert pred.shape == (3, 4, 768) and mask.shape == (3, 4) and cls_proj.shape == (3, 512)
    assert torch.isfinite(loss)


def _analytic_encoder_params(arch):
    """Patch conv + CLS + blocks (qkv, proj, fc1, fc2 with biases; two LayerNorms) + final norm;
    the sin-cos table is not trained."""
    d, p, hidden = arch.embed_dim, arch.patch_size, int(arch.embed_dim * arch.mlp_ratio)
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d) + 4 * d
    return 3 * p * p * d + d + d + arch.depth * block + 2 * d


@pytest.mark.parametrize("name", list_models())
def test_registered_sizes(name):
    with torch.device("meta"):
        enc = create_encoder(name, global_pool="token")
    trainable = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert trainable == _analytic_encoder_params(get_arch(name))
    print(name, f"{trainable / 1e6:.1f}M")


def test_base_matches_timm_vit_base():
    """Independent count: timm's ViT-B/16 without its head and its (here fixed) position table."""
    import timm

    with torch.device("meta"):
        ref = timm.create_model("vit_base_patch16_224", num_classes=0)
        enc = create_encoder("uniemox_vit_base_patch16", global_pool="token")
    ref_count = sum(p.numel() for n, p in ref.named_parameters() if n != "pos_embed")
    assert sum(p.numel() for p in enc.parameters() if p.requires_grad) == ref_count
    assert set(enc.state_dict()) == set(ref.state_dict())
