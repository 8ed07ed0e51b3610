"""OUT/summary.json of a GPU-script run: each step's status (ok, skipped: why, failed rc N,
timed out, not run) and key numbers read back from the files it wrote, then the issue-18
targets checked against them. Prints a short table (the device tool returns the output's end).

    python benchmarks/gpu/summary.py OUT --steps "install env ..."
"""
import argparse
import json
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional

# the files each step must leave under OUT (a step that exits 0 without them has failed)
FILES = {
    "env": ["env.json", "nvidia-smi.txt"],
    "cuda_tests": ["cuda_tests/junit.xml"],
    "kernels_bf16": ["kernels/bf16.json"],
    "kernels_fp32": ["kernels/fp32.json"],
    "step_sweep": ["step_sweep/step.json", "step_sweep/step.csv", "step_sweep/step.png", "step_sweep/flags.txt"],
    "shards": ["loader/shards-manifest.json"],
    "loader": ["loader/loader.json", "loader/loader.csv", "loader/loader.png"],
    "loader_nvjpeg": ["loader/nvjpeg.json", "loader/nvjpeg.csv", "loader/nvjpeg.png"],
    "pretrain": ["pretrain/metrics.jsonl", "pretrain/config.yaml", "pretrain/checkpoints.txt", "pretrain/plan.json"],
    "resume": ["resume/metrics.jsonl", "resume/checkpoints.txt"],
    "step_profile": ["step_profile/step.json"],
}


def _json(path: Path):
    return json.loads(path.read_text())


def _metrics(path: Path) -> Dict[int, Dict]:
    """The last row logged for each step (a resumed run logs its replayed steps again)."""
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return rows


def _checkpoints(path: Path) -> Dict[int, str]:
    """checkpoints.txt: 'step_00000100 complete 1234MB' -> {100: 'complete'}"""
    out = {}
    for line in path.read_text().splitlines():
        name, state, _ = line.split()
        out[int(name.split("_")[1])] = state
    return out


def _perf(rows: List[Dict]) -> Dict:
    """Throughput of a training run from its reports; the first report (start-up, compilation)
    is left out when there are others."""
    timed = rows[1:] or rows
    pick = lambda key: [r[key] for r in timed if r.get(key) is not None]  # noqa: E731
    sps, mfu, mem = pick("perf/samples_per_s"), pick("perf/mfu"), pick("perf/peak_memory_gib")
    return {"reports": len(rows), "samples_per_s_median": statistics.median(sps) if sps else None,
            "mfu_median": statistics.median(mfu) if mfu else None, "peak_memory_gib": max(mem) if mem else None,
            "data_share_median": statistics.median(pick("perf/data_share")) if pick("perf/data_share") else None,
            "loss_first": rows[0].get("loss/loss"), "loss_last": rows[-1].get("loss/loss")}


# -- per step: (problem or None, key numbers) ------------------------------------------------------

def check_env(out: Path):
    env = _json(out / "env.json")
    return None, {"device": env["device"]["name"], "torch": env["versions"]["torch"],
                  "attention": env["attention"]["use"], "commit": env["git"]["commit"]}


def check_cuda_tests(out: Path):
    suite = ET.parse(out / "cuda_tests" / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests = {}
    for case in suite.iter("testcase"):
        skipped = case.find("skipped")
        failed = case.find("failure") is not None or case.find("error") is not None  # Elements: no truth value
        tests[case.get("name")] = ("failed" if failed else
                                   f"skipped: {skipped.get('message', '')}" if skipped is not None else "passed")
    if not tests:
        return "no test ran", {}
    if any(v == "failed" for v in tests.values()):
        return "a test failed", {"tests": tests}
    if all(v.startswith("skipped") for v in tests.values()):
        env = _json(out / "env.json") if (out / "env.json").is_file() else {}
        no_cuda = env.get("device", {}).get("type") != "cuda"
        return ("skipped: no CUDA" if no_cuda else "skipped: " + "; ".join(sorted(set(tests.values())))), \
            {"tests": tests}
    return None, {"tests": tests}


def check_kernels(path: Path):
    res = _json(path)
    rows = {r["kernel"]: {"speedup": r["speedup"], "frac_peak": r["triton_frac_peak"],
                          "max_abs_diff": r["max_abs_diff"], "meets_targets": r["meets_targets"]}
            for r in res["rows"]}
    return (None if rows else "no rows"), {"device": res["device"]["name"], "dtype": res["config"]["dtype"],
                                           "batch": res["config"]["batch"], "kernels": rows}


def check_step(path: Path):
    res = _json(path)
    configs, keys = {}, {}
    for r in res["rows"]:
        if r["variant"] == "ours":  # a case's key, from its ours row (the reference runs eager in every case)
            keys[r["case"]] = f"{r['model']} mask {r['mask_ratio']} batch {r['batch']} {r['compile']}"
        key = keys[r["case"]]
        entry = configs.setdefault(key, {"attn": r["attn"], "kernels": r["kernels"]})
        entry[r["variant"]] = {"samples_per_s": r["samples_per_s"], "mfu": r["mfu"],
                               "peak_memory_gib": r["peak_memory_gib"]}
        if r["variant"] == "ours":
            entry.update(speedup=r["speedup_vs_reference"], meets_targets=r["meets_targets"])
    return (None if configs else "no rows"), {"precision": res["rows"][0]["precision"] if configs else None,
                                              "configs": configs}


def check_shards(out: Path):
    train = _json(out / "loader" / "shards-manifest.json")["splits"]["train"]
    return None, {"samples": train["count"], "shards": len(train["shards"])}


def check_loader(path: Path):
    """Ours' samples/s per worker count, the plain pipeline's, and their ratio."""
    rows = _json(path)["rows"]
    by_variant = {v: {r["workers"]: r for r in rows if r["variant"] == v} for v in ("ours", "plain")}
    return (None if rows else "no rows"), {
        "samples_per_s": {w: r["samples_per_s"] for w, r in by_variant["ours"].items()},
        "plain_samples_per_s": {w: r["samples_per_s"] for w, r in by_variant["plain"].items()},
        "ratio_vs_plain": {w: r["ratio_vs_plain"] for w, r in by_variant["ours"].items()}}


def check_pretrain(out: Path):
    ckpts = _checkpoints(out / "pretrain" / "checkpoints.txt")
    complete = [s for s, state in ckpts.items() if state == "complete"]
    numbers = dict(_perf(list(_metrics(out / "pretrain" / "metrics.jsonl").values())), checkpoints=ckpts)
    if not complete:
        return "no complete checkpoint before the kill", numbers
    return None, numbers


def check_resume(out: Path):
    plan = _json(out / "pretrain" / "plan.json")
    before = _metrics(out / "pretrain" / "metrics.jsonl")
    after = _metrics(out / "resume" / "metrics.jsonl")
    first_ckpts = _checkpoints(out / "pretrain" / "checkpoints.txt")
    start = max((s for s, state in first_ckpts.items() if state == "complete"), default=0)
    resumed = [row for s, row in sorted(after.items()) if s > start]
    # the steps both runs logged after the checkpoint: the same samples, near-identical losses
    replayed = [s for s in before if s > start and s in after]
    numbers = dict(_perf(resumed) if resumed else {}, resumed_from=start, last_step=max(after, default=None),
                   checkpoints=_checkpoints(out / "resume" / "checkpoints.txt"), replayed_steps=replayed,
                   replayed_max_loss_diff=max((abs(before[s]["loss/loss"] - after[s]["loss/loss"]) for s in replayed),
                                              default=None))
    if any(before[s]["batch_crc32"] != after[s]["batch_crc32"] for s in replayed):
        return "the resumed run read other batches than the first run at the same steps", numbers
    if max(after, default=0) != plan["max_steps"]:
        return f"the resumed run ended at step {max(after, default=0)}, not {plan['max_steps']}", numbers
    if numbers["checkpoints"].get(plan["max_steps"]) != "complete":
        return "no complete final checkpoint", numbers
    if not before or max(before) > plan["killed_after_step"]:
        return "the first run was not stopped where planned (UNIEMOX_FAULT hook)", numbers
    return None, numbers


def check_profile(out: Path):
    tables = sorted(p.name for p in (out / "step_profile").glob("*.txt"))
    return (None if tables else "no profile table"), {"tables": tables}


CHECKS = {"env": check_env, "cuda_tests": check_cuda_tests,
          "kernels_bf16": lambda out: check_kernels(out / "kernels" / "bf16.json"),
          "kernels_fp32": lambda out: check_kernels(out / "kernels" / "fp32.json"),
          "step_sweep": lambda out: check_step(out / "step_sweep" / "step.json"),
          "shards": check_shards, "loader": lambda out: check_loader(out / "loader" / "loader.json"),
          "loader_nvjpeg": lambda out: check_loader(out / "loader" / "nvjpeg.json"),
          "pretrain": check_pretrain, "resume": check_resume,
          "step_profile": check_profile}


def step_status(name: str, rec: Optional[Dict], out: Path) -> Dict:
    if rec is None:
        return {"status": "not run: no record"}
    entry = {k: rec[k] for k in ("rc", "seconds", "timeout_s") if k in rec}
    entry["log"] = f"logs/{name}.log" if "rc" in rec else None
    entry["files"] = FILES.get(name, [])
    if "skipped" in rec:
        return dict(entry, status=f"skipped: {rec['skipped']}")
    if "not_run" in rec:
        return dict(entry, status=f"not run: {rec['not_run']}")
    if rec["rc"] in (124, 137) and rec["seconds"] >= rec["timeout_s"] - 1:
        return dict(entry, status="timed out")
    if rec["rc"] != rec["expect_rc"]:
        return dict(entry, status=f"failed rc {rec['rc']}")
    missing = [f for f in entry["files"] if not (out / f).is_file()]
    if missing:
        return dict(entry, status=f"failed: missing {', '.join(missing)}")
    if name in CHECKS:
        try:
            problem, numbers = CHECKS[name](out)
        except Exception as err:  # noqa: BLE001 - an unreadable result is a failed step, not a crash
            return dict(entry, status=f"failed: results unreadable ({type(err).__name__}: {err})")
        entry["numbers"] = numbers
        if problem:
            return dict(entry, status=problem if problem.startswith("skipped") else f"failed: {problem}")
    return dict(entry, status="ok")


def targets(steps: Dict[str, Dict], model: str, gpu: bool) -> Dict:
    """Issue 18's targets against what was measured (the step's for ``model``: ViT-B/16 on the
    GPU); met is None where there is nothing to judge (a CPU run)."""
    out = {}
    kernels = steps.get("kernels_bf16", {}).get("numbers", {})
    for name, row in kernels.get("kernels", {}).items():
        out[f"kernel {name} ({kernels['dtype']}, batch {kernels['batch']}): fwd+bwd speed-up, % of peak"] = {
            "speedup": row["speedup"], "frac_peak": row["frac_peak"], "met": row["meets_targets"]}
    configs = steps.get("step_sweep", {}).get("numbers", {}).get("configs", {})
    for key, c in configs.items():
        if key.startswith(f"{model} "):
            out[f"step {key}: MFU >= 40%, >= 1.5x reference"] = {
                "mfu": c["ours"]["mfu"], "speedup": c.get("speedup"), "met": c.get("meets_targets")}
    loader = steps.get("loader", {}).get("numbers", {}).get("samples_per_s", {})
    step = [c["ours"]["samples_per_s"] for k, c in configs.items() if k.startswith(f"{model} mask 0.75 ")]
    if loader and step:  # the fastest step measured (eager or compiled) is the one to keep fed
        most, fastest = max(loader, key=int), max(step)
        out[f"loader at {most} workers faster than the {model} step (mask 0.75)"] = {
            "loader_samples_per_s": loader[most], "step_samples_per_s": fastest,
            "met": (loader[most] > fastest) if gpu else None}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--steps", required=True, help="the step names, space-separated, in order")
    p.add_argument("--target-model", default="uniemox_vit_base_patch16", help="the step targets' model")
    args = p.parse_args(argv)
    out = Path(args.out)
    records = {}
    for line in (out / "steps.jsonl").read_text().splitlines():
        rec = json.loads(line)
        records[rec["step"]] = rec  # a step run twice (step_sweep's retry): the last one counts
    steps = {name: step_status(name, records.get(name), out) for name in args.steps.split()}
    env = _json(out / "env.json") if (out / "env.json").is_file() else {}
    gpu = env.get("device", {}).get("type") == "cuda"
    summary = {"date": env.get("date"), "mode": env.get("mode"), "command": env.get("command"),
               "device": env.get("device"), "commit": env.get("git", {}).get("commit"),
               "ok": all(s["status"] == "ok" or s["status"].startswith("skipped") for s in steps.values()),
               "steps": steps, "targets": targets(steps, args.target_model, gpu)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'step':<14}{'status':<40}{'seconds':>8}  numbers")
    for name, s in steps.items():
        brief = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in s.get("numbers", {}).items() if isinstance(v, (int, float, str)))
        print(f"{name:<14}{s['status'][:39]:<40}{s.get('seconds', ''):>8}  {brief}")
    for name, t in summary["targets"].items():
        verdict = "met" if t["met"] else "not judged" if t["met"] is None else "MISSED"
        values = ", ".join(f"{k} {v:.3g}" for k, v in t.items() if k != "met" and v is not None)
        print(f"{verdict:<11}{name}: {values}")
    print(f"summary: {out / 'summary.json'} ({'all ok' if summary['ok'] else 'some steps failed'})")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
