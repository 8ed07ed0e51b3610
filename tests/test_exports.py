"""Every export whole or not at all, its files known to belong together, every file read through the
checked loader before it is passed on: exports killed half-way (a real SIGKILL at a chosen file),
exports mixed from two steps, a pickle under a weights file's name, a folder that is not an export."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from subprocesses import child_env

from uniemox.errors import UserError
from uniemox.exports import hub
from uniemox.exports.kinds import resolve_init
from uniemox.exports.pretrain import read_pretrain_export
from uniemox.exports.teacher import load_teacher, teacher_card, write_teacher_weights
from uniemox.models import create_encoder
from uniemox.tasks.pretrain import export_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN, PREDICT, FINETUNE = (os.path.join(REPO, "launch", f) for f in ("pretrain.py", "predict.py", "finetune.py"))
TINY = ["model.arch={img_size: 32, depth: 2, decoder_depth: 1}", "data.batch_size=8", "data.num_workers=0",
        "log.every=1", "log.progress=false", "log.image_every=0", "checkpoint.every=2", "checkpoint.keep=2",
        "optim.max_steps=4"]


def run(script, args, env=None):
    return subprocess.run([sys.executable, script] + list(args), cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=child_env(env))


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), last


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A real pretraining run's checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("run")
    proc = run(PRETRAIN, ["--run-dir", str(run_dir)] + TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {step: str(run_dir / "checkpoints" / f"step_{step:08d}") for step in (2, 4)}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "red.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(path)
    return str(path)


def _step(folder):
    return json.loads((folder / "config.json").read_text())["export"]["step"]


@pytest.mark.parametrize("fault", ["encoder.safetensors", "swap"])
def test_an_export_killed_while_replacing_an_older_one_leaves_that_one_whole(checkpoints, photo, tmp_path, fault):
    out = tmp_path / "export"
    export_checkpoint(checkpoints[2], str(out))
    killed = run(PRETRAIN, ["--export", checkpoints[4], str(out)], env={"UNIEMOX_FAULT": f"kill@export:{fault}"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    weights, _, run_config = read_pretrain_export(str(out))  # the step-2 export, whole
    assert _step(Path(weights).parent) == 2
    if fault == "swap":  # killed between its two renames: the folder is gone, the old one set aside is read
        assert not out.exists()
        proc = run(PREDICT, ["--zero-shot", str(out), photo, "--format", "json"])
        assert proc.returncode == 0, proc.stderr[-2000:]
    # the next export command takes over the dead one's claim, settles what it left and replaces
    # the old export whole
    again = run(PRETRAIN, ["--export", checkpoints[4], str(out)])
    assert again.returncode == 0, again.stderr[-2000:]
    assert _step(out) == 4 and read_pretrain_export(str(out))[2] == run_config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_mixed_export_is_refused_by_every_reader(checkpoints, photo, tmp_path):
    for step in (2, 4):
        export_checkpoint(checkpoints[step], str(tmp_path / f"step{step}"))
    for name in ("pretrainer.safetensors", "encoder.safetensors"):  # a step-4 file beside step-2 ones
        mixed = tmp_path / f"mixed-{name.split('.')[0]}"
        shutil.copytree(tmp_path / "step2", mixed)
        shutil.copy(tmp_path / "step4" / name, mixed / name)
        with pytest.raises(UserError, match=f"{name} belongs to another export"):
            read_pretrain_export(str(mixed), need=name.split(".")[0])
    one_line_error(run(PREDICT, ["--zero-shot", str(tmp_path / "mixed-pretrainer"), photo]),
                   "pretrainer.safetensors belongs to another export")
    one_line_error(run(FINETUNE, ["--export", str(tmp_path / "mixed-encoder"), str(tmp_path / "timm")]),
                   "encoder.safetensors belongs to another export")
    assert not (tmp_path / "timm").exists()
    with pytest.raises(UserError, match="belongs to another export"):
        resolve_init(str(tmp_path / "mixed-encoder"))  # model.init of fine-tuning
    # timm's layout: weights of another export beside a config
    for step in (2, 4):
        hub.export_pretrained(str(tmp_path / f"step{step}"), str(tmp_path / f"timm{step}"))
    shutil.copy(tmp_path / "timm4" / "model.safetensors", tmp_path / "timm2" / "model.safetensors")
    with pytest.raises(UserError, match="model.safetensors belongs to another export"):
        hub.create_from_export(str(tmp_path / "timm2"))
    # the teacher: a card beside the weights that belongs to other weights
    clip = load_teacher("uniemox-clip-tiny", pretrained="none").clip.state_dict()
    for name in ("a", "b"):
        write_teacher_weights(clip, tmp_path / name / "teacher.safetensors", "fp16", {"model": "uniemox-clip-tiny"})
    assert teacher_card(tmp_path / "a" / "teacher.safetensors")["weights"] == "teacher.safetensors"
    shutil.copy(tmp_path / "b" / "teacher.json", tmp_path / "a" / "teacher.json")
    with pytest.raises(UserError, match="teacher.json belongs to another export"):
        teacher_card(tmp_path / "a" / "teacher.safetensors")


def test_finetune_export_refuses_a_pickle_named_model_safetensors(tmp_path):
    best = tmp_path / "run" / "best"
    model = create_encoder("uniemox_vit_tiny_patch16", num_classes=3, img_size=32, depth=2)
    hub.write_export(model.state_dict(), str(best), "uniemox_vit_tiny_patch16", {"img_size": 32, "depth": 2}, 3,
                     "avg", list("abc"), {"task": "single_label"})
    torch.save(model.state_dict(), best / "model.safetensors")  # a pickle under the name
    proc = run(FINETUNE, ["--export", str(tmp_path / "run"), str(tmp_path / "out")])
    one_line_error(proc, "model.safetensors", "not a readable safetensors file")
    assert not (tmp_path / "out").exists()


def test_an_export_never_replaces_a_folder_that_is_not_an_export(checkpoints, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not an export of this kind: refusing to replace it"):
        export_checkpoint(checkpoints[2], str(tmp_path))
    encoder = create_encoder("uniemox_vit_tiny_patch16", num_classes=0, img_size=32, depth=2)
    with pytest.raises(UserError, match="is not an export of this kind"):
        hub.write_export(encoder.state_dict(), str(tmp_path), "uniemox_vit_tiny_patch16", {"img_size": 32, "depth": 2},
                         0, "avg")
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"
