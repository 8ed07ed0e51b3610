"""launch/benchmark.py kernels: the CPU smoke mode writes a well-formed results file; without
a GPU the real benchmark refuses with one line and exit code 2. (Timings on the CPU are
meaningless and are not checked; the real numbers come from a GPU run.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from uniemox.bench.kernels import KERNELS
from uniemox.launch.benchmark import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["kernels", "--device", "cpu", "--interpret", "--batch", "2", "--image-size", "32",
        "--patch-size", "16", "--embed-dim", "32", "--decoder-dim", "32", "--distill-dim", "32",
        "--warmup", "1", "--reps", "2", "--dtype", "fp32"]


def test_smoke_run_writes_a_wellformed_results_file(tmp_path):
    out = tmp_path / "res.json"
    assert main(TINY + ["--text-rows", "5", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "kernels" and res["smoke"] is True and "note" in res
    assert res["device"]["type"] == "cpu" and res["device"]["peak_gbps"] is None
    assert res["versions"]["torch"] == torch.__version__ and res["versions"]["triton"]
    assert res["config"]["batch"] == 2 and res["config"]["text_rows"] == 5
    assert res["timing"]["statistic"] == "median" and res["timing"]["reps"] == 2
    assert [r["kernel"] for r in res["rows"]] == list(KERNELS)
    for row in res["rows"]:
        assert row["bytes"] > 0 and row["triton_ms"] > 0 and row["torch_ms"] > 0
        assert row["speedup"] == pytest.approx(row["torch_ms"] / row["triton_ms"])
        assert row["triton_gbps"] == pytest.approx(row["bytes"] / row["triton_ms"] / 1e6)
        assert row["triton_frac_peak"] is None
        # the benchmark cross-checks the kernels it times (fp32 here)
        assert row["max_abs_diff"]["forward"] < 1e-4 and row["max_abs_diff"]["grad"] < 1e-4
        assert row["targets"]["speedup"] >= 1.5 and row["meets_targets"] is None  # CPU: no verdict
    assert res["rows"][-1]["shapes"]["text"] == [5, 32]


def test_peak_override_gives_fractions_and_subset(tmp_path):
    out = tmp_path / "res.json"
    args = TINY + ["--kernels", "distillation", "--peak-gbps", "100", "--out", str(out)]
    assert main(args) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["triton_frac_peak"] == pytest.approx(row["triton_gbps"] / 100)


def test_default_path_is_under_benchmarks_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(TINY + ["--kernels", "random_masking"]) == 0
    (path,) = (tmp_path / "benchmarks" / "results").glob("kernels-*.json")
    assert json.loads(path.read_text())["rows"][0]["kernel"] == "random_masking"


@pytest.mark.parametrize("extra, message", [
    (["--image-size", "30"], "multiple of --patch-size"),
    (["--mask-ratio", "1.0"], "--mask-ratio"),
    (["--kernels", "softmax"], "unknown"),
    (["--batch", "0"], "--batch"),
])
def test_bad_input_is_one_line_and_exit_2(extra, message, capsys, tmp_path):
    assert main(TINY + extra + ["--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "x.json").exists()


def test_cpu_without_interpreter_refuses(capsys):
    assert main(["kernels", "--device", "cpu"]) == 2
    assert "GPU kernels" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the benchmark would run")
def test_entry_point_refuses_without_a_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "launch/benchmark.py", "kernels"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "GPU benchmark" in lines[0], proc.stderr


def test_entry_point_smoke_run_from_a_shell(tmp_path):
    """As typed in a shell, TRITON_INTERPRET unset: --interpret sets it, so nothing the launcher
    imports (the step benchmark's open_clip -> torch._dynamo) may import triton before that."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "res.json"
    proc = subprocess.run([sys.executable, "launch/benchmark.py"] + TINY + ["--kernels", "random_masking",
                                                                           "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["kernel"] == "random_masking" and row["max_abs_diff"]["forward"] == 0.0
