"""The `tensorboard --logdir ...` line a finished pretraining run prints works as printed: the command
starts on 127.0.0.1 and serves the run's scalars and reconstruction images over its HTTP API.

setuptools 81 and later ship no `pkg_resources`, and a fresh environment gets the newest setuptools
(tensorboard depends on it): the command runs here with `pkg_resources` hidden, as it is there."""
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from subprocesses import child_env, free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["model.arch={img_size: 32, depth: 2, decoder_depth: 1}", "data.batch_size=8", "data.num_workers=0",
        "log.progress=false", "optim.max_steps=2", "log.every=1", "log.image_every=1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "pretrain.py"), "--run-dir",
                           str(root / "run")] + TINY, cwd=root, capture_output=True, text=True, timeout=600,
                          env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [line.split("TensorBoard:", 1)[1].strip() for line in proc.stdout.splitlines() if "TensorBoard:" in line]
    return root, shlex.split(printed[-1])


@pytest.fixture(scope="module")
def server(finished_run, tmp_path_factory):
    """The printed command from the environment's own bin folder, pkg_resources hidden, on a free port."""
    root, command = finished_run
    assert command[:2] == ["tensorboard", "--logdir"], command
    hidden = tmp_path_factory.mktemp("no_pkg_resources")
    (hidden / "pkg_resources.py").write_text("raise ModuleNotFoundError(\"No module named 'pkg_resources'\")\n")
    port = free_port()
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = child_env({"PATH": path, "PYTHONPATH": os.pathsep.join([str(hidden), REPO])})
    proc = subprocess.Popen(command + ["--host", "127.0.0.1", "--port", str(port)], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # up once it answers, and the run's files are read once it lists the run
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
            try:
                if get(base, "/data/runs"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tensorboard did not serve the run within 120 s"
            time.sleep(0.5)
        yield base, root / "run"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stdout.close()


def fetch(base, path_and_query):
    with urllib.request.urlopen(f"{base}{path_and_query}", timeout=30) as response:
        return response.read()


def get(base, path, **query):
    return json.loads(fetch(base, path + (f"?{urllib.parse.urlencode(query)}" if query else "")))


def test_the_printed_command_serves_the_runs_scalars(server):
    base, run_dir = server
    (run,) = get(base, "/data/runs")
    tags = get(base, "/data/plugin/scalars/tags")[run]
    assert "loss/loss" in tags
    with open(run_dir / "metrics.jsonl") as f:
        logged = {row["step"]: row["loss/loss"] for row in map(json.loads, f) if "loss/loss" in row}
    served = {step: value for _, step, value in get(base, "/data/plugin/scalars/scalars", run=run, tag="loss/loss")}
    assert sorted(served) == sorted(logged) == [1, 2]
    for step, value in served.items():
        assert math.isclose(value, logged[step], rel_tol=1e-6)  # float32 in the event file


def test_the_printed_command_serves_the_reconstruction_images(server):
    base, _ = server
    (run,) = get(base, "/data/runs")
    assert "reconstruction" in get(base, "/data/plugin/images/tags")[run]
    entries = get(base, "/data/plugin/images/images", run=run, tag="reconstruction", sample=0)
    assert [e["step"] for e in entries] == [1, 2]
    png = fetch(base, "/data/plugin/images/individualImage?" + entries[-1]["query"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
