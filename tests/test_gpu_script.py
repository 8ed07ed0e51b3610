"""benchmarks/gpu/run.sh --cpu-smoke, for real: every step of the GPU script runs end to end on
the CPU at tiny sizes (the same code as on the GPU), so that GPU minutes are never spent on
typos. Then the runner's own bookkeeping: out of time, a failing step, --only."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from subprocesses import child_env

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["install", "env", "cuda_tests", "kernels_bf16", "step_sweep", "shards", "loader", "loader_nvjpeg", "pretrain",
         "resume", "kernels_fp32", "step_profile"]


def run_script(out: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = child_env({"PYTHON": sys.executable})
    env.pop("TRITON_INTERPRET", None)  # as from a shell: conftest's setting must not help the script
    return subprocess.run(["bash", "benchmarks/gpu/run.sh", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "out"
    proc = run_script(out, "--cpu-smoke")
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None
    return out, proc, summary


def test_every_step_ran_and_is_ok(smoke):
    out, proc, summary = smoke
    assert proc.returncode == 0 and summary is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(summary["steps"]) == STEPS and summary["ok"] is True and summary["mode"] == "cpu-smoke"
    status = {name: s["status"] for name, s in summary["steps"].items()}
    assert status.pop("install") == "skipped: cpu smoke: the current environment"
    assert status.pop("cuda_tests") == "skipped: no CUDA"  # ran, and skipped for that reason
    assert set(status.values()) == {"ok"}, status
    for name, step in summary["steps"].items():
        assert all((out / f).is_file() for f in step["files"]), name
        if name != "install":
            assert step["seconds"] < step["timeout_s"] and (out / step["log"]).is_file(), name
    assert "all ok" in proc.stdout


def test_each_step_measured_what_it_should(smoke):
    out, _, summary = smoke
    steps = {name: s.get("numbers", {}) for name, s in summary["steps"].items()}
    env = json.loads((out / "env.json").read_text())
    assert env["command"].endswith("--cpu-smoke") and env["versions"]["torch"] and env["git"]["commit"]
    assert env["device"]["type"] == "cpu" and env["attention"] == dict(env["attention"], runs=True, use="auto")
    # the tree measured is this one, through the script's links (as on the GPU machine, where
    # nothing is installed), not whatever copy of uniemox the environment has
    assert env["versions"]["uniemox_path"] == str(out) + ".work/src/uniemox"
    assert steps["cuda_tests"]["tests"] == {"test_xformers_matches_math_on_gpu": "skipped: needs CUDA + xformers"}
    for dtype in ("bf16", "fp32"):
        kernels = steps[f"kernels_{dtype}"]
        assert kernels["dtype"] == dtype and len(kernels["kernels"]) == 5
        assert all(k["max_abs_diff"]["forward"] < 0.1 for k in kernels["kernels"].values())
    configs = steps["step_sweep"]["configs"]
    assert sorted(configs) == [f"uniemox_vit_{m}_patch16 mask {r} batch 2 eager" for m in ("small", "tiny")
                               for r in (0.75, 0.9)]
    assert all(c["ours"]["samples_per_s"] > 0 and c["reference"]["samples_per_s"] > 0 and c["speedup"] > 0
               for c in configs.values())
    assert "--compile eager" in (out / "step_sweep" / "flags.txt").read_text()  # passed (compiled on the GPU only)
    assert steps["shards"] == {"samples": 8, "shards": 2}  # 4 photos x 2 copies, 4 per shard
    assert sorted(steps["loader"]["samples_per_s"]) == sorted(steps["loader"]["plain_samples_per_s"]) == ["0", "2"]
    assert all(r > 0 for r in steps["loader"]["ratio_vs_plain"].values())
    assert sorted(steps["loader_nvjpeg"]["samples_per_s"]) == ["0", "1"]  # the CPU fallback of the GPU decode
    # killed after 5 steps (exit 137) with the step-3 checkpoint complete; resumed from it to step 6
    assert summary["steps"]["pretrain"]["rc"] == 137 and steps["pretrain"]["checkpoints"] == {"3": "complete"}
    assert steps["pretrain"]["samples_per_s_median"] > 0 and steps["pretrain"]["peak_memory_gib"] > 0
    resume = steps["resume"]
    assert (resume["resumed_from"], resume["last_step"], resume["replayed_steps"]) == (3, 6, [4])
    assert resume["checkpoints"]["6"] == "complete" and resume["replayed_max_loss_diff"] < 1e-4
    assert len(steps["step_profile"]["tables"]) == 2  # ours and the reference
    assert list((out / "step_profile").glob("*.trace.json.gz"))
    # the targets are listed, but a CPU run judges none of them
    assert len(summary["targets"]) == 5 + 2 + 1 and {t["met"] for t in summary["targets"].values()} == {None}


def test_steps_without_time_left_are_not_started(tmp_path):
    proc = run_script(tmp_path / "out", "--cpu-smoke", "--budget", "10", timeout=120)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert proc.returncode == 1 and summary["ok"] is False
    statuses = [s["status"] for name, s in summary["steps"].items() if name != "install"]
    assert all(re.fullmatch(r"not run: out of time: \d+s left of --budget 10", s) for s in statuses), statuses


def test_a_failing_step_is_recorded_and_only_selected_steps_run(tmp_path):
    # --only loader: no shards were made, so the loader exits 2 ("not found")
    proc = run_script(tmp_path / "out", "--cpu-smoke", "--only", "loader", timeout=300)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert proc.returncode == 1 and summary["steps"]["loader"]["status"] == "failed rc 2"
    assert "not found" in (tmp_path / "out" / "logs" / "loader.log").read_text()
    others = {s["status"] for name, s in summary["steps"].items() if name not in ("loader", "install")}
    assert others == {"skipped: not selected (--only)"}


def test_every_test_that_needs_cuda_is_marked_for_the_script():
    """The script runs `pytest -m cuda`: a test skipped without CUDA but not marked would never run."""
    unmarked = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.search(r"skipif\(not .*torch\.cuda\.is_available\(\)", line) and \
                    "pytest.mark.cuda" not in "".join(lines[max(0, i - 2):i]):
                unmarked.append(f"{path.name}:{i + 1}")
    assert unmarked == []


def test_summary_tells_time_outs_failures_and_missing_files_apart(tmp_path):
    records = [{"step": "env", "rc": 124, "expect_rc": 0, "seconds": 45.2, "timeout_s": 45},
               {"step": "kernels_bf16", "rc": 1, "expect_rc": 0, "seconds": 3.0, "timeout_s": 90},
               {"step": "loader", "rc": 0, "expect_rc": 0, "seconds": 9.0, "timeout_s": 75},
               {"step": "pretrain", "rc": 137, "expect_rc": 137, "seconds": 30.0, "timeout_s": 120}]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "loader").mkdir()
    (tmp_path / "loader" / "loader.json").write_text(json.dumps(
        {"rows": [{"workers": 4, "variant": "ours", "samples_per_s": 9.0, "ratio_vs_plain": 1.6}]}))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "summary.py"), str(tmp_path),
                           "--steps", "env kernels_bf16 loader pretrain resume"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert {name: s["status"] for name, s in steps.items()} == {
        "env": "timed out", "kernels_bf16": "failed rc 1",
        "loader": "failed: missing loader/loader.csv, loader/loader.png",  # exit 0 is not enough
        "pretrain": "failed: missing pretrain/metrics.jsonl, pretrain/config.yaml, pretrain/checkpoints.txt, "
                    "pretrain/plan.json",
        "resume": "not run: no record"}


def test_summary_keys_each_step_case_by_its_compile_setting(tmp_path):
    """An eager and a compiled case of one configuration stay apart, each with its reference
    (which runs eager in both); the loader is judged against the faster of the two."""
    def row(case, variant, compile, sps):
        return {"case": case, "variant": variant, "compile": compile, "model": "m", "mask_ratio": 0.75, "batch": 2,
                "attn": "sdpa", "kernels": "torch", "precision": "fp32", "samples_per_s": sps, "mfu": None,
                "peak_memory_gib": None, "speedup_vs_reference": sps / 1.0, "meets_targets": None}
    rows = [row(0, "ours", "eager", 2.0), row(0, "reference", "eager", 1.0), row(1, "ours", "compiled", 3.0),
            row(1, "reference", "eager", 1.1)]
    (tmp_path / "step.json").write_text(json.dumps({"rows": rows}))
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        import summary
    finally:
        sys.path.pop(0)
    problem, numbers = summary.check_step(tmp_path / "step.json")
    configs = numbers["configs"]
    assert problem is None and sorted(configs) == ["m mask 0.75 batch 2 compiled", "m mask 0.75 batch 2 eager"]
    assert configs["m mask 0.75 batch 2 compiled"]["ours"]["samples_per_s"] == 3.0
    assert configs["m mask 0.75 batch 2 compiled"]["reference"]["samples_per_s"] == 1.1
    steps = {"step_sweep": {"numbers": numbers}, "loader": {"numbers": {"samples_per_s": {"4": 2.5}}}}
    (loader,) = [t for name, t in summary.targets(steps, "m", gpu=True).items() if name.startswith("loader")]
    assert loader["step_samples_per_s"] == 3.0 and loader["met"] is False
