"""A plain (non-editable) install, used from another directory: the console scripts find their
shipped configs, recipes, kernels and packaged teacher, and run the main job, fine-tuning and the
benchmark's CPU smoke run without the source tree."""
import json
import os
import subprocess
import sys
import venv

import pytest
from subprocesses import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv that sees the test environment's packages but holds uniemox as a built wheel."""
    root = tmp_path_factory.mktemp("install")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(root / "wheel"), REPO], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "bdist_wheel" in proc.stderr:  # setuptools without wheel support
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "wheel"),
                               REPO], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    wheel = next((root / "wheel").glob("uniemox-*.whl"))
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],  # the venv's own
                          capture_output=True, text=True, timeout=600, env=child_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    work = root / "elsewhere"
    work.mkdir()
    return python, work


def script(installed, name, args, timeout=900):
    python, work = installed
    env = child_env({"PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    return subprocess.run([str(python.parent / name)] + list(args), cwd=work, capture_output=True, text=True,
                          timeout=timeout, env=env)


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_installed_package_is_not_the_source_tree(installed):
    python, work = installed
    proc = ok(subprocess.run([str(python), "-c", "import uniemox, uniemox.configs, uniemox.kernels; "
                              "print(uniemox.__file__, uniemox.configs.__file__)"], cwd=work,
                             capture_output=True, text=True, env=child_env()))
    assert REPO not in proc.stdout and "site-packages" in proc.stdout


def test_main_job_finetune_and_benchmark_run_from_another_directory(installed):
    _, work = installed
    tiny = ["model.arch={img_size: 32, depth: 2}", "data.batch_size=8", "data.num_workers=1", "log.progress=false"]
    ok(script(installed, "uniemox-pretrain", tiny + ["optim.max_steps=2", "log.every=1", "log.image_every=0",
                                                      "--run-dir", "pre"]))
    assert (work / "pre" / "checkpoints" / "step_00000002" / "COMPLETE").is_file()
    ok(script(installed, "uniemox-pretrain", ["--export", "pre/checkpoints/step_00000002", "export"]))
    ok(script(installed, "uniemox-finetune", tiny + ["--init", "export", "optim.max_steps=2", "eval.every=2",
                                                      "--run-dir", "ft"]))
    assert json.loads((work / "ft" / "eval" / "test.json").read_text())["num_samples"] == 256
    ok(script(installed, "uniemox-benchmark", [
        "step", "--device", "cpu", "--model", "uniemox_vit_tiny_patch16", "--teacher", "uniemox-clip-tiny",
        "--arch", "img_size=32,depth=2,decoder_depth=1", "--batch", "2", "--zero", "0", "--warmup", "1",
        "--steps", "1", "--out", "bench/step.json"]))
    assert json.loads((work / "bench" / "step.json").read_text())["rows"]
