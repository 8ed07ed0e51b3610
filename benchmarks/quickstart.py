"""The README's quick-start training command, timed, and its figures written as a results file.

    python benchmarks/quickstart.py                       # -> benchmarks/results/cpu-<N>core/quickstart.json
    python benchmarks/quickstart.py --source /tmp/before --label before --out /tmp/before.json

Runs ``deepspeed launch/pretrain.py --deepspeed configs/zero2.json`` (the quick start's main job,
the embedded sample set) from a source tree (this repository by default) into a fresh run dir,
and records the whole command's wall time, the median of the reported samples/s, the first and
last value of every loss term, the machine (CPU model, cores, memory, the load average before and
after: the figures are only as quiet as the machine was), the versions and the date.

``--source DIR`` measures another checkout of the project in place (``git worktree add DIR
COMMIT``), with its own package first on the path; its ``kernels/`` folder is linked into its
package as ``uniemox/kernels`` for the run (what ``setup.py``'s package_dir does on install), then
unlinked. Back to back with the default source, that compares two versions on the same machine.
"""
import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = ["deepspeed", "launch/pretrain.py", "--deepspeed", "configs/zero2.json"]


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2 ** 20, 1), "gpu": None,
            "os": platform.platform()}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "deepspeed", "open_clip", "timm", "webdataset"):
        try:
            out[name] = __import__(name).__version__
        except Exception as e:  # the file still says what was found
            out[name] = f"not importable: {type(e).__name__}"
    return out


def commit(source: str) -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                           capture_output=True, text=True).stdout.strip()
    return (proc.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summarise(metrics_path: str) -> dict:
    rows = [json.loads(line) for line in open(metrics_path, encoding="utf-8")]
    losses = sorted(k for k in rows[0] if k.startswith("loss/"))
    return {"steps": rows[-1]["step"], "reports": len(rows),
            "samples_per_s_median": round(statistics.median(r["perf/samples_per_s"] for r in rows), 1),
            "loss_first": {k[5:]: round(rows[0][k], 4) for k in losses},
            "loss_last": {k[5:]: round(rows[-1][k], 4) for k in losses}}


def measure(source: str) -> dict:
    # another checkout runs in place: its kernels/ must import as uniemox.kernels (this repository's
    # do through the install); the link is removed after the run
    link = os.path.join(source, "uniemox", "kernels")
    linked = source != REPO and not os.path.exists(link) and os.path.isdir(os.path.join(source, "kernels"))
    if linked:
        os.symlink(os.path.join("..", "kernels"), link)
    try:
        return _timed_run(source)
    finally:
        if linked:
            os.remove(link)


def _timed_run(source: str) -> dict:
    run_dir = tempfile.mkdtemp(prefix="quickstart-")
    env = dict(os.environ, PYTHONPATH=source + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = COMMAND[:1] + ["--master_port", str(free_port())] + COMMAND[1:] + ["--run-dir", run_dir]
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        fail(f"the quick start failed (exit {proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]}")
    result = dict(command=" ".join(COMMAND) + " --run-dir <fresh>", wall_s=round(wall, 1),
                  load_average_before=[round(x, 2) for x in load_before],
                  load_average_after=[round(x, 2) for x in os.getloadavg()],
                  **summarise(os.path.join(run_dir, "metrics.jsonl")))
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=REPO, help="the project tree to run (default: this repository)")
    p.add_argument("--label", default="current", help="what the source is, for the results file")
    p.add_argument("--out", help="results file (default: benchmarks/results/cpu-<cores>core/quickstart.json)")
    p.add_argument("--note", default="", help="a line for the results file (e.g. what else ran on the machine)")
    args = p.parse_args()
    source = os.path.abspath(args.source)
    if not os.path.isfile(os.path.join(source, "launch", "pretrain.py")):
        fail(f"{source} is not a checkout of this project (no launch/pretrain.py)")
    out = args.out or os.path.join(REPO, "benchmarks", "results", f"cpu-{os.cpu_count()}core", "quickstart.json")
    result = dict(benchmark="quickstart", label=args.label, source_commit=commit(source),
                  date=datetime.now(timezone.utc).replace(microsecond=0).isoformat(), machine=machine(),
                  versions=versions(), note=args.note, **measure(source))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
