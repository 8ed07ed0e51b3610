"""What the trainer reports: TensorBoard scalars, a console progress bar, MFU, memory.

Throughput is measured over the steps since the last report; the data-loading share is
the time spent waiting for the next batch over the whole step time.
"""
import json
import logging
import os
import re
import time
from typing import Dict, Optional

import torch

from uniemox.io import atomic_write_text

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
    """TensorBoard plus ``metrics.jsonl`` (one JSON object per report, easy to grep or plot)
    on rank 0; on other ranks (run_dir None) it writes nothing.

    ``start_step``: the step the run starts from (a resume's checkpoint step; 0 for a fresh run).
    What an earlier attempt logged beyond it is dropped (TensorBoard's ``purge_step``, the JSONL
    rewritten atomically), so every step is logged once however often the run was resumed."""

    def __init__(self, run_dir: Optional[str], start_step: int = 0):
        self.tb = self.jsonl = None
        if run_dir:
            from torch.utils.tensorboard import SummaryWriter
            path = os.path.join(run_dir, "metrics.jsonl")
            _truncate_jsonl(path, start_step)
            self.tb = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start_step + 1)
            self.jsonl = open(path, "a", encoding="utf-8")

    def scalars(self, values: Dict[str, float], step: int, extra: Optional[Dict] = None) -> None:
        """``values`` go to TensorBoard and the JSONL; ``extra`` (non-scalars) to the JSONL only."""
        if self.tb:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
            self.jsonl.write(json.dumps(dict(values, **(extra or {}), step=step)) + "\n")
            self.jsonl.flush()

    def image(self, tag: str, chw: torch.Tensor, step: int) -> None:
        if self.tb:
            self.tb.add_image(tag, chw, step)

    def close(self) -> None:
        if self.tb:
            self.tb.flush()
            self.tb.close()
            self.jsonl.close()
            self.tb = None


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
                        _truncate_jsonl(os.path.join(folder, name), start_step)
            path = os.path.join(folder, f"rank{rank}.jsonl")
            _truncate_jsonl(path, start_step)
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


def _truncate_jsonl(path: str, last_step: int) -> None:
    """Keep the rows of ``path`` up to ``last_step`` (and lines that do not parse are dropped)."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= last_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a kill mid-write
    atomic_write_text(path, "".join(kept))
