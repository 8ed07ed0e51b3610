"""What the GPU script ran on, written before any measurement: OUT/env.json (date, command,
commit, host, device, library versions, the attention backend that works) and
OUT/nvidia-smi.txt. Results are data only with this beside them.

    python benchmarks/gpu/environment.py OUT --command "bash benchmarks/gpu/run.sh ..." --mode gpu
"""
import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

NVIDIA_QUERY = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu"


def _run(cmd):
    """(exit code, stdout) of a command that may be absent, as text."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"{type(err).__name__}: {err}"
    return proc.returncode, proc.stdout.strip() or proc.stderr.strip()


def git_commit(repo: Path) -> dict:
    """GIT_COMMIT wins: the device machine gets a copy of the tree without its history."""
    rc, head = _run(["git", "-C", str(repo), "rev-parse", "HEAD"])
    _, dirty = _run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    return {"commit": os.environ.get("GIT_COMMIT") or (head if rc == 0 else None),
            "source": "GIT_COMMIT" if os.environ.get("GIT_COMMIT") else ("git" if rc == 0 else None),
            "dirty": bool(dirty) if rc == 0 else None}


def nvidia(out: Path) -> dict:
    rc, full = _run(["nvidia-smi"])
    (out / "nvidia-smi.txt").write_text((full or "") + "\n")
    if rc != 0:
        return {"available": False, "detail": full}
    _, rows = _run(["nvidia-smi", f"--query-gpu={NVIDIA_QUERY}", "--format=csv,noheader"])
    return {"available": True, "gpus": [dict(zip(NVIDIA_QUERY.split(","), (v.strip() for v in row.split(","))))
                                        for row in rows.splitlines()]}


def torch_device() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"type": "cpu", "name": platform.processor() or platform.machine()}
    p = torch.cuda.get_device_properties(0)
    return {"type": "cuda", "name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2 ** 30, 1), "bf16": torch.cuda.is_bf16_supported()}


def versions() -> dict:
    from uniemox.bench.results import library_versions

    out = library_versions()
    for name in ("numpy", "webdataset", "uniemox"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except Exception as err:  # noqa: BLE001 - recorded, not fatal: the steps will say what fails
            out[name] = f"missing ({type(err).__name__})"
    import uniemox
    out["uniemox_path"] = os.path.dirname(uniemox.__file__)
    return out


def attention_check() -> dict:
    """Does ``auto`` attention run here? (xformers can import yet fail on another torch.) If
    not, the script runs its steps with sdpa and says so."""
    import torch

    from uniemox.models.attention import attention, resolve_backend

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.randn(2, 16, 4, 64, device=device, dtype=dtype)
    chosen = resolve_backend("auto", device)
    try:
        attention(q, q, q, "auto")
        return {"auto": chosen, "runs": True, "use": "auto", "error": None}
    except Exception as err:  # noqa: BLE001 - any failure means: fall back to sdpa
        return {"auto": chosen, "runs": False, "use": "sdpa", "error": f"{type(err).__name__}: {err}"[:300]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--command", default="")
    p.add_argument("--mode", default="")
    args = p.parse_args(argv)
    from uniemox.bench.timing import utc_now

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[2]
    env = {"date": utc_now(), "command": args.command, "mode": args.mode, "git": git_commit(repo),
           "host": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()},
           "nvidia_smi": nvidia(out), "device": torch_device(), "versions": versions(),
           "attention": attention_check(),
           "env": {k: os.environ.get(k) for k in ("PYTHONPATH", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")}}
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    print(json.dumps({k: env[k] for k in ("date", "device", "attention")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
