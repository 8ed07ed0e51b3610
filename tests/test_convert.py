import pickle

import pytest
import timm
import torch

from uniemox.convert import (load_encoder_checkpoint, load_pretrainer_checkpoint, mae_checkpoint,
                             read_checkpoint)
from uniemox.errors import UserError
from uniemox.models import create_encoder, create_pretrainer

ARCH = dict(img_size=32, depth=2, decoder_depth=1)


def _pretrainer(seed, **kw):
    torch.manual_seed(seed)
    return create_pretrainer("uniemox_vit_tiny_patch16", **ARCH, **kw).eval()


def _mae_outputs(m, imgs, noise):
    with torch.no_grad():
        loss, pred, mask, cls_proj = m.mae(imgs, 0.75, noise)
    return loss, pred, cls_proj


def test_facebookresearch_mae_checkpoint_round_trip(tmp_path):
    # proj_dim = decoder width: alpha comes from decoder_embed, as in the release
    src, dst = _pretrainer(0, proj_dim=256), _pretrainer(1, proj_dim=256)
    path = tmp_path / "mae_visualize.pth"
    torch.save({"model": src.model.state_dict()}, path)  # models_mae.py's key names, unprefixed
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 4)
    assert not torch.equal(_mae_outputs(src, imgs, noise)[1], _mae_outputs(dst, imgs, noise)[1])
    report = load_pretrainer_checkpoint(dst, str(path))
    # an MAE file has everything but the fusion, which is reported as missing
    assert report.missing == sorted(f"fusion.{k}" for k in dst.fusion.state_dict())
    assert report.unexpected == []
    for a, b in zip(_mae_outputs(src, imgs, noise), _mae_outputs(dst, imgs, noise)):
        assert torch.equal(a, b)


def test_release_checkpoint_with_module_prefix_and_fusion(tmp_path):
    src, dst = _pretrainer(0, fusion="mlp_glu"), _pretrainer(1, fusion="mlp_glu")
    ckpt = mae_checkpoint(src)
    ckpt["model"] = {"module." + k: v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "release.pth")
    report = load_pretrainer_checkpoint(dst, str(tmp_path / "release.pth"))
    assert report.missing == [] and report.unexpected == []
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_encoder_only_checkpoint_into_encoder_and_pretrainer(tmp_path):
    src = _pretrainer(0)
    encoder_keys = {k: v for k, v in src.model.state_dict().items()
                    if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder_keys}, tmp_path / "mae_pretrain.pth")
    enc = create_encoder("uniemox_vit_tiny_patch16", img_size=32, depth=2, global_pool="token").eval()
    report = load_encoder_checkpoint(enc, str(tmp_path / "mae_pretrain.pth"))
    assert report.missing == [] and report.unexpected == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), src.model.forward_features(x))
    # into a pretrainer: the decoder is reported missing, not silently left random
    dst = _pretrainer(2)
    report = load_pretrainer_checkpoint(dst, str(tmp_path / "mae_pretrain.pth"))
    assert "decoder_embed.weight" in report.missing and "mask_token" in report.missing
    # and a projection to a teacher wider than the decoder is no part of an MAE file
    assert "distill_proj.weight" in report.missing


def test_timm_vit_weights_give_timm_outputs(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=0).eval()
    torch.save(ref.state_dict(), tmp_path / "timm_vit.pth")
    enc = create_encoder("uniemox_vit_tiny_patch16", img_size=32, depth=2, global_pool="token").eval()
    report = load_encoder_checkpoint(enc, str(tmp_path / "timm_vit.pth"))
    assert report.missing == [] and report.unexpected == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), ref.forward_features(x), rtol=1e-4, atol=1e-4)


def test_unknown_and_missing_keys_are_reported(tmp_path):
    src = _pretrainer(0)
    sd = src.model.state_dict()
    sd.pop("norm.weight")
    sd["extra.thing"] = torch.zeros(3)
    torch.save({"model": sd}, tmp_path / "odd.pth")
    report = load_pretrainer_checkpoint(_pretrainer(1), str(tmp_path / "odd.pth"))
    assert report.missing[0] == "norm.weight" and report.unexpected == ["extra.thing"]
    assert all(k.startswith(("fusion.", "distill_proj.")) for k in report.missing[1:])
    assert "norm.weight" in report.summary() and "extra.thing" in report.summary()


def test_wrong_size_is_a_clear_error(tmp_path):
    torch.save({"model": _pretrainer(0).model.state_dict()}, tmp_path / "tiny.pth")
    small = create_pretrainer("uniemox_vit_small_patch16", **ARCH)
    with pytest.raises(UserError, match="shape mismatch for .*wrong model size"):
        load_pretrainer_checkpoint(small, str(tmp_path / "tiny.pth"))


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        read_checkpoint(str(tmp_path / "nope.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_checkpoint(str(tmp_path / "garbage.pth"))
    with open(tmp_path / "exploit.pth", "wb") as f:
        pickle.dump({"model": _Exploit()}, f)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_checkpoint(str(tmp_path / "exploit.pth"))


def test_bad_model_name():
    with pytest.raises(UserError, match="unknown model 'uniemox_vit_gigantic'.*uniemox_vit_base_patch16"):
        create_pretrainer("uniemox_vit_gigantic")
    with pytest.raises(UserError, match="unknown architecture override"):
        create_pretrainer("uniemox_vit_tiny_patch16", depht=2)
