"""The lower bounds of setup.py are true: a venv of its own (no system packages) gets the LOWEST
release of every direct dependency that setup.py admits, the project with --no-deps, and then runs
what touches each dependency's API: pretraining (DeepSpeed engine, compile off; WebDataset reading;
the open_clip teacher; TensorBoard), the export (DeepSpeed's zero_to_fp32, safetensors), teacher
training (open_clip's ClipLoss), fine-tuning (timm's Mixup and save_for_hf, matplotlib reports) and
timm's `local-dir:` load of its export.

Downloads about 3 GB (torch with its CUDA libraries); docs/development.md#dependencies has its wall
time. Deselect with `-m "not lowest_versions"`."""
import ast
import os
import subprocess
import sys
import venv

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from subprocesses import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["data.batch_size=8", "data.num_workers=1", "log.progress=false", "optim.max_steps=2", "log.every=1"]
NO_FLOOR = {"triton"}  # the release torch pins


def install_requires(setup_py=os.path.join(REPO, "setup.py")):
    call = next(node for node in ast.walk(ast.parse(open(setup_py).read()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    return [Requirement(text) for text in ast.literal_eval(
        next(k.value for k in call.keywords if k.arg == "install_requires"))]


def lowest_pins():
    """`name==floor` for each direct dependency of this platform (the `>=` of its specifier)."""
    pins = []
    for req in install_requires():
        if req.marker is None or req.marker.evaluate():
            floors = [spec.version for spec in req.specifier if spec.operator == ">="]
            pins.append(f"{req.name}=={floors[0]}" if floors else req.name)
    return pins


def test_every_direct_dependency_has_a_floor():
    unbounded = {req.name for req in install_requires()
                 if not any(spec.operator == ">=" for spec in req.specifier)}
    assert unbounded == NO_FLOOR


def ok(proc):
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def lowest(tmp_path_factory):
    root = tmp_path_factory.mktemp("lowest")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = str(root / "venv" / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    ok(subprocess.run(pip + lowest_pins(), capture_output=True, text=True, timeout=1500))
    ok(subprocess.run(pip + ["--no-deps", REPO], capture_output=True, text=True, timeout=600))
    ok(subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, timeout=120))
    work = root / "work"
    work.mkdir()
    # its own sample-shard cache: shards written with the lowest pillow stay out of the suite's
    env = child_env({"PATH": os.pathsep.join([os.path.dirname(python), os.environ.get("PATH", "")]),
                     "UNIEMOX_CACHE": str(root / "cache")})
    return python, work, env


def run(lowest, *command):
    python, work, env = lowest
    return ok(subprocess.run(list(command), cwd=work, capture_output=True, text=True, timeout=900, env=env))


@pytest.mark.lowest_versions
def test_the_lowest_admitted_versions_run_every_dependency_the_project_calls(lowest):
    python, work, _ = lowest
    pins = dict(pin.partition("==")[::2] for pin in lowest_pins())
    versions = run(lowest, python, "-c", "import importlib.metadata as m, sys; print(' '.join("
                   "m.version(name) for name in sys.argv[1:]))", *pins)
    for (name, floor), installed in zip(pins.items(), versions.stdout.split()):
        assert not floor or Version(installed) == Version(floor), (name, installed)
    run(lowest, "uniemox-pretrain", "model.arch={img_size: 32, depth: 2, decoder_depth: 1}", "log.image_every=1",
        "--run-dir", "pre", *TINY)
    assert list((work / "pre" / "tb").iterdir()) and (work / "pre" / "reconstructions").is_dir()
    run(lowest, "uniemox-pretrain", "--export", "pre/checkpoints/step_00000002", "export")
    run(lowest, "uniemox-train-teacher", "export.path=null", "eval.every=-1", "--run-dir", "teacher", *TINY)
    run(lowest, "uniemox-finetune", "model.arch={img_size: 32, depth: 2}", "--init", "export", "eval.every=2",
        "--run-dir", "ft", *TINY)  # the release recipe: timm's Mixup
    loaded = run(lowest, python, "-c", "import timm, uniemox.models.timm_models; "
                 "m = timm.create_model('local-dir:ft/best', pretrained=True); print(m.pretrained_cfg['label_names'])")
    assert "amusement" in loaded.stdout
