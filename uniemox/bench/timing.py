"""Timing, device description and results files shared by the benchmarks.

GPU timing: warm-up calls, then each repetition between two CUDA events, the L2 cache
flushed before each one (so the bytes counted really come from HBM), one synchronisation at
the end; the statistic is the median. CPU timing (smoke runs only) uses perf_counter.
"""
import datetime as _dt
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from uniemox.io import atomic_write_json

# HBM bandwidth of the devices this project measures on, GB/s (vendor data sheets)
PEAK_GBPS = (("H200", 4800.0), ("H100 PCIE", 2000.0), ("H100 NVL", 3900.0), ("H100", 3350.0))
L2_FLUSH_BYTES = 256 * 2 ** 20  # larger than any current GPU's L2


def peak_gbps(device_name: str) -> Optional[float]:
    """Peak memory bandwidth from the table, or None for a device not in it."""
    upper = device_name.upper()
    for key, gbps in PEAK_GBPS:
        if key in upper:
            return gbps
    return None


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int,
              flush_l2: bool = True) -> Tuple[float, List[float]]:
    """Median wall time of ``fn()`` in ms and all repetitions."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times), times
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if flush_l2 else None
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    torch.cuda.synchronize(device)
    for start, end in events:
        if flush is not None:
            flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    times = [start.elapsed_time(end) for start, end in events]
    return statistics.median(times), times


def interleave(variants: Sequence[str], rounds: int) -> List[str]:
    """A B, B A, A B ...: the order of the timed slots of the benchmarks that compare variants
    (``step``, ``loader``), so a drift of the machine falls on every variant alike."""
    order: List[str] = []
    for r in range(rounds):
        order += list(variants) if r % 2 == 0 else list(reversed(variants))
    return order


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda}
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception:  # the results file still says which torch ran the reference
        out["triton"] = None
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def default_results_path(benchmark: str, device: str, root: str = "benchmarks/results") -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{benchmark}-{slug}-{stamp}.json"


def write_json(path: Path, payload: dict) -> Path:
    """Atomic: a reader never sees half a results file."""
    return atomic_write_json(path, payload, indent=2)
