import argparse
import copy
import pickle

import pytest
import timm
import torch

from uniemox.exports.release import (load_encoder_checkpoint, load_pretrainer_checkpoint, mae_checkpoint,
                                     read_checkpoint)
from uniemox.errors import UserError
from uniemox.models import create_encoder, create_pretrainer
from uniemox.models.fusion_release import to_release

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


def _optimizer_state(*modules):
    """A real AdamW state after one step, as the training scripts save it (of copies: the step
    must not move the weights being saved)."""
    params = [p for m in copy.deepcopy(modules) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95))
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.zero_grad()
    return opt.state_dict()


def _outputs(m, imgs, noise, alpha, beta):
    with torch.no_grad():
        return _mae_outputs(m, imgs, noise) + (m.fusion(alpha, beta),)


def _same_outputs(src, dst):
    g, dim = torch.Generator().manual_seed(5), src.fusion.dim
    args = (torch.randn(2, 3, 32, 32, generator=g), torch.rand(2, 4, generator=g),
            torch.randn(2, dim, generator=g), torch.randn(2, dim, generator=g))
    for a, b in zip(_outputs(src, *args), _outputs(dst, *args)):
        assert torch.equal(a, b)


def test_release_main_pretrain_checkpoints(tmp_path):
    """main_pretrain.py writes checkpoint.pth every epoch (DDP-wrapped model and fusion, so keys are
    'module.'-prefixed; att_fusion in the release's names) and checkpoint-N.pth via MAE's save_model."""
    src, dst = _pretrainer(0, fusion="mlp_glu", proj_dim=256), _pretrainer(1, fusion="mlp_glu", proj_dim=256)
    args = argparse.Namespace(model="mae_vit_large_patch16", mask_ratio=0.9, use_fusion="mlp_attention_glu",
                              heads=3, channels=512, lr=None, blr=1e-3, resume="", use_component=["fusion"],
                              distributed=True, dist_backend="nccl", gpu=0, rank=0)
    torch.save({"model": {"module." + k: v for k, v in src.model.state_dict().items()},
                "att_fusion": {"module." + k: v for k, v in to_release(src.fusion).items()},
                "optimizer": _optimizer_state(src), "epoch": 100, "args": args}, tmp_path / "checkpoint.pth")
    report = load_pretrainer_checkpoint(dst, str(tmp_path / "checkpoint.pth"))
    assert report.missing == [] and report.unexpected == []
    _same_outputs(src, dst)
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 0}
    torch.save({"model": src.model.state_dict(), "optimizer": _optimizer_state(src.model), "epoch": 99,
                "scaler": scaler, "args": args}, tmp_path / "checkpoint-99.pth")
    report = load_pretrainer_checkpoint(_pretrainer(2, fusion="mlp_glu", proj_dim=256), str(tmp_path / "checkpoint-99.pth"))
    assert report.unexpected == [] and report.missing == sorted(f"fusion.{k}" for k in src.fusion.state_dict())
    # exporting in the release's layout gives the file's att_fusion back, tensor for tensor
    exported = mae_checkpoint(dst)["att_fusion"]
    assert exported.keys() == to_release(src.fusion).keys()
    assert all(torch.equal(v, to_release(src.fusion)[k]) for k, v in exported.items())


def test_facebookresearch_mae_training_checkpoint(tmp_path):
    """util/misc.py save_model: {'model', 'optimizer', 'epoch', 'scaler', 'args'}."""
    src, dst = _pretrainer(0, proj_dim=256), _pretrainer(1, proj_dim=256)
    args = argparse.Namespace(batch_size=64, epochs=800, model="mae_vit_base_patch16", input_size=224,
                              mask_ratio=0.75, norm_pix_loss=True, weight_decay=0.05, lr=None, blr=1.5e-4,
                              data_path="/datasets01/imagenet_full_size/061417/", output_dir="./output_dir",
                              distributed=False, dist_url="env://")
    torch.save({"model": src.model.state_dict(), "optimizer": _optimizer_state(src.model), "epoch": 799,
                "scaler": torch.amp.GradScaler("cpu").state_dict(), "args": args}, tmp_path / "checkpoint-799.pth")
    report = load_pretrainer_checkpoint(dst, str(tmp_path / "checkpoint-799.pth"))
    assert report.unexpected == [] and all(k.startswith("fusion.") for k in report.missing)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 4)
    for a, b in zip(_mae_outputs(src, imgs, noise), _mae_outputs(dst, imgs, noise)):
        assert torch.equal(a, b)
    enc = create_encoder("uniemox_vit_tiny_patch16", img_size=32, depth=2, global_pool="token").eval()
    assert load_encoder_checkpoint(enc, str(tmp_path / "checkpoint-799.pth")).missing == []


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


class _Args(argparse.Namespace):  # harmless, but not the type the allowlist names: refused too
    pass


def _refusal(path):
    with pytest.raises(UserError) as err:
        read_checkpoint(str(path))
    text = str(err.value)
    assert "\n" not in text and "\x1b" not in text and "weights_only` set to `False" not in text
    return text


def test_bad_files(tmp_path, capsys):
    with pytest.raises(UserError, match="checkpoint not found"):
        read_checkpoint(str(tmp_path / "nope.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    assert "not a checkpoint written by torch.save" in _refusal(tmp_path / "garbage.pth")
    with open(tmp_path / "exploit.pth", "wb") as f:
        pickle.dump({"model": _Exploit()}, f)
    assert "cannot read checkpoint" in _refusal(tmp_path / "exploit.pth")
    with open(tmp_path / "exploit2.pth", "wb") as f:
        pickle.dump({"model": _Exploit()}, f, protocol=2)
    assert "it needs print, which a checkpoint may not hold" in _refusal(tmp_path / "exploit2.pth")
    torch.save({"model": {"w": torch.zeros(2)}, "args": _Exploit()}, tmp_path / "exploit.pth")
    assert "it needs builtins.print, which a checkpoint may not hold" in _refusal(tmp_path / "exploit.pth")
    torch.save({"model": {"w": torch.zeros(2)}, "args": _Args(lr=1.0)}, tmp_path / "subclass.pth")
    assert "it needs test_convert._Args" in _refusal(tmp_path / "subclass.pth")
    good = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=1.0)}, good)
    assert read_checkpoint(str(good))["args"].lr == 1.0
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert "RuntimeError: PytorchStreamReader failed reading zip archive" in _refusal(tmp_path / "cut.pth")
    assert "this must never run" not in capsys.readouterr().out


def test_bad_model_name():
    with pytest.raises(UserError, match="unknown model 'uniemox_vit_gigantic'.*uniemox_vit_base_patch16"):
        create_pretrainer("uniemox_vit_gigantic")
    with pytest.raises(UserError, match="unknown architecture override"):
        create_pretrainer("uniemox_vit_tiny_patch16", depht=2)
