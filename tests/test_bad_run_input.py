"""Bad values that used to end in tracebacks or hangs: architecture fields, YAML that expands
without end, betas outside [0, 1), a run directory that is a file, a batch size below 1. Each is one
line and exit code 2 (the entry points run for real where the path goes through them)."""
import os
import subprocess
import sys
import time

import pytest

import uniemox.exports.hub as tm
from uniemox.config import read_yaml, resolve_config
from uniemox.config.classify import FinetuneConfig
from uniemox.config.clip_teacher import TeacherTrainConfig
from uniemox.config.pretrain import PretrainConfig
from uniemox.errors import UserError
from uniemox.models import create_encoder, get_arch

from subprocesses import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ten levels of nine: 9**10 (3.5 billion) values from 400 bytes, all of them under model.arch
BOMB = "[" + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}' if i else '1'] * 9)}]" for i in range(10)) + "]"
BOMB_FILE = f"model:\n  name: uniemox_vit_tiny_patch16\n  arch:\n    depth: {BOMB}\n"


def _entry(script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=child_env(), timeout=300)


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and last.startswith("error: "), proc.stderr[-3000:]
    assert all(n in last for n in needles), last
    return last


@pytest.mark.parametrize("override,message", [
    ({"depth": "abc"}, "'model.arch.depth': expected int, got 'abc'"),
    ({"patch_size": 0}, "'model.arch.patch_size': must be in [1, 1024], got 0"),
    ({"num_heads": -2}, "'model.arch.num_heads': must be in [1, 1024]"),
    ({"mlp_ratio": "wide"}, "'model.arch.mlp_ratio': expected float"),
    ({"depth": 10 ** 9}, "'model.arch.depth': must be in [1, 256]"),
    ({"img_size": 40}, "img_size 40 is not a multiple of patch_size 16"),
    ({"embed_dim": 190}, "embed_dim 190 is not a multiple of num_heads 3"),
])
def test_every_architecture_field_is_typed_and_ranged(override, message):
    with pytest.raises(UserError) as err:
        get_arch("uniemox_vit_tiny_patch16", **override)
    assert message in str(err.value)
    assert get_arch("uniemox_vit_tiny_patch16", depth=2, mlp_ratio=2.5).mlp_ratio == 2.5


def test_yaml_that_expands_beyond_the_limit_is_refused_before_it_is_built(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB_FILE)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="bomb.yaml: refused: expands to more than 100,000 values"):
        read_yaml(str(bomb))
    assert time.perf_counter() - t0 < 5
    looped = tmp_path / "loop.yaml"
    looped.write_text("model:\n  arch: &a {depth: *a}\n")
    with pytest.raises(UserError, match="loop.yaml: refused: it holds an alias that refers to itself"):
        read_yaml(str(looped))
    with pytest.raises(UserError, match="override model.arch: refused: expands to more"):
        resolve_config(PretrainConfig, overrides=[f"model.arch={{depth: {BOMB}}}"])


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig, TeacherTrainConfig])
@pytest.mark.parametrize("betas", ["[0.9, 1.0]", "[-0.1, 0.95]", "[0.9, 1.5]"])
def test_betas_outside_zero_one_are_refused_in_every_task(cls, betas):
    with pytest.raises(UserError, match=r"'optim.betas': must be in \[0.0, 1.0\)"):
        resolve_config(cls, overrides=[f"optim.betas={betas}"])
    assert resolve_config(cls, overrides=["optim.betas=[0.0, 0.999]"]).optim.betas == (0.0, 0.999)


def test_the_entry_points_say_it_in_one_line(tmp_path):
    from uniemox.train.run import check_run_dir

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB_FILE)
    _one_line_error(_entry("pretrain.py", "--config", bomb, "--run-dir", tmp_path / "run"), "expands to more than")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    _one_line_error(_entry("pretrain.py", "--run-dir", a_file, "model.name=uniemox_vit_tiny_patch16"),
                    str(a_file), "is a file")
    with pytest.raises(UserError, match="is inside .*notes.txt, which is a file"):
        check_run_dir(str(a_file / "sub" / "run"))
    check_run_dir(str(tmp_path / "new" / "run"))  # not there yet: it will be made


def test_predict_batch_size_below_one_is_one_line(tmp_path):
    model = tmp_path / "best"
    tiny = {"img_size": 32, "depth": 2}
    tm.write_export(create_encoder("uniemox_vit_tiny_patch16", num_classes=2, **tiny).state_dict(), str(model),
                    "uniemox_vit_tiny_patch16", tiny, 2, "avg", ["calm", "joy"], {"task": "single_label"})
    image = tmp_path / "a.png"
    from PIL import Image
    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    for size in ("0", "-3"):
        _one_line_error(_entry("predict.py", "--model", model, image, "--batch-size", size),
                        f"--batch-size must be >= 1, got {size}")
