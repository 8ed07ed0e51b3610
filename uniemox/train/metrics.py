"""What the trainer reports: throughput, MFU, memory, and the writer that takes the scalars to the
trackers (trackers.py).

Throughput is measured over the steps since the last report; the data-loading share is
the time spent waiting for the next batch over the whole step time.
"""
import logging
import time
from typing import Dict, Optional, Sequence

import torch

from .trackers import open_trackers

logger = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device (no sparsity). MFU is left out where the device is unknown.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def device_peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name:
            return peak
    return None


def peak_memory_gib(device: torch.device) -> Optional[float]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    except Exception:
        return None


class StepTimer:
    """Accumulates data-wait and total time between reports (the device is waited for only at
    the report, so the total covers everything the steps queued)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.data_s = self.total_s = 0.0
        self.samples = self.steps = 0
        self._t = time.perf_counter()

    def waited(self, seconds: float):
        """Time spent waiting for a batch."""
        self.data_s += seconds

    def step_done(self, samples: int):
        """A step was queued: its time is measured once the device has caught up (``synchronize``
        at the report), so no step waits for the device."""
        self.samples += samples
        self.steps += 1

    def synchronize(self, device: torch.device):
        """Wait for the device, then close the interval: total time since the last report."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        self.total_s += now - self._t
        self._t = now

    def summary(self, flops_per_sample: Optional[float], peak_flops: Optional[float]) -> Dict[str, float]:
        out = {"perf/samples_per_s": self.samples / max(self.total_s, 1e-9),
               "perf/step_time_ms": 1000 * self.total_s / max(self.steps, 1),
               "perf/data_share": self.data_s / max(self.total_s, 1e-9)}
        if flops_per_sample and peak_flops:
            out["perf/mfu"] = out["perf/samples_per_s"] * flops_per_sample / peak_flops
        return out


class MetricsWriter:
    """The report's scalars to every tracker of ``report_to`` (trackers.py: TensorBoard and
    ``metrics.jsonl`` by default; CSV, W&B, Comet) on rank 0; on other ranks (run_dir None) it
    writes nothing.

    ``start_step``: the step the run starts from (a resume's checkpoint step; 0 for a fresh run).
    What an earlier attempt logged beyond it is dropped where the tracker allows (trackers.py), so
    every step is logged once however often the run was resumed. ``log``: the run's log section
    (W&B / Comet project, name, online; default: LogConfig's), ``run_config``: what the trackers
    record as the run's config."""

    def __init__(self, run_dir: Optional[str], start_step: int = 0, report_to: Sequence[str] = ("tensorboard", "jsonl"),
                 log=None, run_config: Optional[Dict] = None):
        self.trackers = []
        if run_dir:
            from uniemox.config.sections import LogConfig
            self.trackers = open_trackers(list(report_to), run_dir, start_step, run_config or {}, log or LogConfig())

    @property
    def where(self) -> str:
        """Where the scalars go, one clause a tracker (for the run's start-up line)."""
        return " | ".join(t.where for t in self.trackers)

    def scalars(self, values: Dict[str, float], step: int, extra: Optional[Dict] = None) -> None:
        """``values`` go to every tracker; ``extra`` (non-scalars) to the JSONL only."""
        for tracker in self.trackers:
            tracker.log(values, step, extra or {})

    def image(self, tag: str, chw: torch.Tensor, step: int) -> None:
        for tracker in self.trackers:
            if hasattr(tracker, "image"):  # TensorBoard's
                tracker.image(tag, chw, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
