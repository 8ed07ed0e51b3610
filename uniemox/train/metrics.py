"""What the trainer reports: throughput, MFU, memory, and the writer that takes the scalars to the
trackers (trackers.py).

Throughput is measured over the steps since the last report; the data-loading share is
the time spent waiting for the next batch over the whole step time.
"""
import logging
import json
import os
import re
import time
from typing import Dict, Optional, Sequence

import torch

from .trackers import cut_after, jsonl_step, open_trackers

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
        self.before_write = None  # called before anything is logged (the trainer's preemption settles)
        if run_dir:
            from uniemox.config.sections import LogConfig
            self.trackers = open_trackers(list(report_to), run_dir, start_step, run_config or {}, log or LogConfig())

    @property
    def where(self) -> str:
        """Where the scalars go, one clause a tracker (for the run's start-up line)."""
        return " | ".join(t.where for t in self.trackers)

    def scalars(self, values: Dict[str, float], step: int, extra: Optional[Dict] = None) -> None:
        """``values`` go to every tracker; ``extra`` (non-scalars) to the JSONL only."""
        if self.before_write:
            self.before_write()
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


class SampleLog:
    """``samples/rank{r}.jsonl`` (``log.sample_keys``): which samples every micro-batch of this
    rank held, ``{"step", "micro", "keys", "epochs"}`` per line, to audit the data order (each
    sample once per epoch, across resumes). Cut back to the resume step like metrics.jsonl; rank
    0 also cuts the logs of ranks a resume on fewer ranks left behind."""

    def __init__(self, run_dir: str, rank: int, world: int, start_step: int, enabled: bool):
        self.file = None
        if enabled:
            folder = os.path.join(run_dir, "samples")
            os.makedirs(folder, exist_ok=True)
            if rank == 0:
                for name in os.listdir(folder):
                    match = re.fullmatch(r"rank(\d+)\.jsonl", name)
                    if match and int(match.group(1)) >= world:
                        cut_after(os.path.join(folder, name), start_step, jsonl_step)
            path = os.path.join(folder, f"rank{rank}.jsonl")
            cut_after(path, start_step, jsonl_step)
            self.file = open(path, "a", encoding="utf-8")

    def write(self, step: int, micro: int, batch: Dict) -> None:
        if self.file:
            epochs = batch.get("epoch")
            self.file.write(json.dumps({"step": step, "micro": micro, "keys": list(batch["key"]),
                                        "epochs": epochs.tolist() if epochs is not None else None}) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None

