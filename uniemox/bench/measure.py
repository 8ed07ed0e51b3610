"""The timing loop of the step benchmark (timm's way: warm-up, then timed steps).

Each step is: wait for the next batch (host time, the data-loading part), draw the masking
noise, run the step, synchronise the device. Synchronising after every step costs little
at step times of tens of ms and makes each step's time exact; the trainer's StepTimer does
the same. Throughput = samples / wall time of the timed steps; the data-loading share =
time waiting for batches / that wall time.

Memory (CUDA only): peak = ``max_memory_allocated`` over warm-up and timed steps (the first
step allocates the optimizer state); resident = ``memory_allocated`` between steps (weights,
master weights, optimizer state, gradient buffers), taken after the warm-up (with --warmup 0,
before the first step: the optimizer state then counts as activations). Peak - resident is
what the batch's activations and temporaries need; divided by the batch, per sample.
"""
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch

from .data import masking_noise
from .runners import StepRunner


@dataclass
class Measurement:
    steps: int
    samples: int
    total_s: float
    data_s: float
    step_ms: List[float] = field(default_factory=list)
    peak_memory_bytes: Optional[int] = None
    resident_memory_bytes: Optional[int] = None
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    cache_hit_rate: Optional[float] = None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.total_s

    @property
    def median_ms(self) -> float:
        return statistics.median(self.step_ms)

    @property
    def data_share(self) -> float:
        return self.data_s / self.total_s


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_counts(runner: StepRunner) -> Optional[tuple]:
    info = runner.teacher.cache_info()
    return (info.hits, info.misses) if info.maxsize else None


def run_steps(runner: StepRunner, batches: Iterator[Dict], *, warmup: int, steps: int, batch: int,
              patches: int, device: torch.device, seed: int = 0) -> Measurement:
    """Warm-up steps, then ``steps`` timed ones; see the module doc for what is measured."""
    cuda = device.type == "cuda"
    if cuda:
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    losses = []

    def one_step(i: int) -> float:
        wait = time.perf_counter()
        b = next(batches)
        waited = time.perf_counter() - wait
        b["noise"] = masking_noise(i, batch, patches, device, seed)
        loss = runner(b)
        if i == 0 or i == warmup + steps - 1:
            losses.append(loss)
        return waited

    for i in range(warmup):
        one_step(i)
    synchronize(device)
    resident = torch.cuda.memory_allocated(device) if cuda else None
    counts0 = _cache_counts(runner)
    m = Measurement(steps=steps, samples=steps * batch, total_s=0.0, data_s=0.0)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        m.data_s += one_step(i)
        synchronize(device)
        m.step_ms.append((time.perf_counter() - t0) * 1e3)
    m.total_s = time.perf_counter() - start
    if cuda:
        m.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
        m.resident_memory_bytes = resident
    counts1 = _cache_counts(runner)
    if counts0 is not None:
        hits, misses = counts1[0] - counts0[0], counts1[1] - counts0[1]
        m.cache_hit_rate = hits / max(hits + misses, 1)
    m.first_loss, m.last_loss = float(losses[0]), float(losses[-1])
    return m


def profile_steps(runner: StepRunner, batches: Iterator[Dict], *, steps: int, batch: int, patches: int,
                  device: torch.device, out_dir: Path, name: str) -> Path:
    """A torch.profiler trace of ``steps`` more steps (Chrome trace + a table of the top
    kernels by device time), to find what limits a configuration."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out_dir.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities, record_shapes=False) as prof:
        for i in range(steps):
            b = next(batches)
            b["noise"] = masking_noise(10 ** 6 + i, batch, patches, device)
            runner(b)
            synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    (out_dir / f"{name}.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=40))
    trace = out_dir / f"{name}.trace.json"
    prof.export_chrome_trace(str(trace))
    return trace
