"""Exports in timm's layout round-trip through timm.create_model with identical outputs."""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch

import uniemox.exports.hub as tm
from uniemox.errors import UserError
from uniemox.models import create_encoder, create_pretrainer, get_arch, list_models
from uniemox.exports.folder import ID_KEY
from uniemox.exports.pretrain import write_pretrain_export
from uniemox.safeload import read_safetensors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"img_size": 32, "depth": 2}
NAME = "uniemox_vit_tiny_patch16"


def test_every_project_name_is_registered_with_its_input_size():
    assert set(list_models()) <= set(timm.list_models("uniemox_*"))
    for name in list_models():
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.input_size == (3, get_arch(name).img_size, get_arch(name).img_size)


def _classifier():
    model = create_encoder(NAME, num_classes=5, **TINY)
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a trained-looking head, not 2e-5 noise
    return model.eval()


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_finetuned_export_round_trips_through_timm(tmp_path, pool):
    model = create_encoder(NAME, num_classes=5, global_pool=pool, **TINY).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    out = tmp_path / "exp"
    tm.write_export(model.state_dict(), str(out), NAME, TINY, 5, pool, list("abcde"), {"task": "single_label"})
    x = torch.randn(3, 3, 32, 32)
    want = model(x)
    by_file = timm.create_model(NAME, pretrained=True, num_classes=5, global_pool=pool, **TINY,
                                pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"))).eval()
    by_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    ours, config = tm.create_from_export(str(out))
    for other in (by_file, by_dir, ours):
        assert torch.equal(other(x), want)
    assert by_dir.pretrained_cfg["label_names"] == list("abcde") and config["global_pool"] == pool
    assert by_dir.pretrained_cfg["input_size"] == (3, 32, 32)


def test_an_export_is_timms_save_for_hf_output_with_a_model_card(tmp_path):
    """The folder is what timm's save_for_hf writes for the same model (plus our section and the
    card): config.json as timm's own, README.md with the training config and the results."""
    from timm.models import save_for_hf

    from uniemox.exports.kinds import init_architecture

    model = _classifier()
    card = {"description": "A test classifier.", "results": {"val": {"top1": 0.5, "num_samples": 8}},
            "config": {"optim": {"blr": 5.0}}, "details": {"Recipe": "linear_probe"}}
    paths = tm.write_export(model.state_dict(), str(tmp_path / "exp"), NAME, TINY, 5, "avg", list("abcde"),
                            {"task": "single_label"}, card=card)
    assert sorted(os.listdir(tmp_path / "exp")) == ["README.md", "config.json", "model.safetensors"]
    reference = timm.create_model(NAME, num_classes=5, global_pool="avg", **TINY)
    save_for_hf(reference, str(tmp_path / "ref"), model_config={"label_names": list("abcde")}, safe_serialization=True)
    ours = json.loads((tmp_path / "exp" / "config.json").read_text())
    export_id = ours["uniemox"]["export_id"]  # the weights carry it too: files of one export
    assert read_safetensors(paths["weights"], tensors=False)[1][ID_KEY] == export_id
    assert ours.pop("uniemox") == {"task": "single_label", "format": tm.EXPORT_FORMAT, "export_id": export_id}
    assert ours == json.loads((tmp_path / "ref" / "config.json").read_text())
    text = open(paths["card"]).read()
    assert text.startswith("---\n") and "library_name: timm" in text and "A test classifier." in text
    assert "| val | 0.5000 | 8 |" in text and "## Training config" in text and "blr: 5.0" in text
    assert f'timm.create_model("local-dir:{tmp_path / "exp"}", pretrained=True)' in text
    assert init_architecture(str(tmp_path / "exp")) == {"name": NAME, "arch": TINY}
    with pytest.raises(UserError, match="do not match"):
        tm.write_export(model.state_dict(), str(tmp_path / "bad"), NAME, {"img_size": 32, "depth": 3}, 5, "avg")


def test_another_class_count_gets_a_fresh_head_and_a_wrong_size_is_an_error(tmp_path):
    model = _classifier()
    tm.write_export(model.state_dict(), str(tmp_path / "exp"), NAME, TINY, 5, "avg")
    file = str(tmp_path / "exp" / "model.safetensors")
    other = timm.create_model(NAME, pretrained=True, num_classes=3, pretrained_cfg_overlay=dict(file=file), **TINY)
    assert other.head.weight.shape == (3, 192)
    assert torch.equal(other.blocks[1].mlp.fc1.weight, model.blocks[1].mlp.fc1.weight)
    with pytest.raises(UserError, match="shape mismatch"):
        timm.create_model("uniemox_vit_small_patch16", pretrained=True, num_classes=5,
                          pretrained_cfg_overlay=dict(file=file), **TINY)
    with pytest.raises(UserError, match="not a UniEmoX timm export"):
        (tmp_path / "plain").mkdir()
        (tmp_path / "plain" / "config.json").write_text("{}")
        tm.create_from_export(str(tmp_path / "plain"))


def test_pretrained_encoder_export_gives_the_distilled_cls_features(tmp_path):
    """A pretraining export (as launch/pretrain.py --export writes it) -> a headless timm model
    whose output is the final-normed CLS token; the CLI does the same."""
    pre = create_pretrainer(NAME, proj_dim=64, **TINY).eval()
    src = tmp_path / "pretrain_export"
    run = tmp_path / "run"  # the pretraining run the export came from, with its logged losses
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"loss/loss": 0.9, "step": 6}\n{"loss/loss": 0.25, "optim/lr": 0.1, "step": 7}\n')
    write_pretrain_export(pre.state_dict(), str(src), {"model": {"name": NAME, "arch": TINY}},
                          source=str(run / "checkpoints" / "step_00000007"), step=7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls = pre.model.forward_features(x)[:, 0]
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "finetune.py"), "--export", str(src),
                           str(tmp_path / "timm")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    enc = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    assert enc.num_classes == 0 and torch.equal(enc(x), cls)
    card = (tmp_path / "timm" / "README.md").read_text()
    assert "image feature backbone" in card and "## Training config" in card
    assert "| | loss/loss |" in card and "| pretraining, step 7 | 0.2500 |" in card
    # fine-tuning from it: avg pooling with a fresh fc_norm and head, encoder weights loaded
    ft = timm.create_model(NAME, pretrained=True, num_classes=8, **TINY,
                           pretrained_cfg_overlay=dict(file=str(tmp_path / "timm" / "model.safetensors")))
    assert torch.equal(ft.blocks[0].attn.qkv.weight, pre.model.blocks[0].attn.qkv.weight)
    with pytest.raises(UserError, match="not a pretraining export"):
        tm.export_pretrained(str(tmp_path), str(tmp_path / "x"))
