"""The timing of the step benchmark: warm-up, then interleaved timed slots.

Each variant (ours, reference) is built and warmed up once; then the variants take turns in
timed slots of ``steps`` steps, A B B A (``rounds`` 2; 3 gives A B B A A B ...), so that a
drift of the machine (another process, thermal state, the allocator) falls on both alike.
A slot waits for the device once, at its end: steps queue as they do in training. Each slot
gives a throughput; a variant's figures are the median, min and max over its slots, and the
speed-up is the ratio of the medians.

Memory (CUDA only), per variant, over its warm-up after it was built: peak =
``max_memory_allocated``, resident = ``memory_allocated`` after the warm-up (weights, master
weights, optimizer state, gradient buffers), both less what was allocated before it was built
(the other variant). Peak - resident is what the batch's activations and temporaries need.
"""
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch

from .data import masking_noise
from .runners import StepRunner
from .timing import interleave  # noqa: F401  (the slot order; step.py takes it from here)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measurement:
    steps: int                                   # per slot
    batch: int
    slot_s: List[float] = field(default_factory=list)
    data_s: float = 0.0
    peak_memory_bytes: Optional[int] = None
    resident_memory_bytes: Optional[int] = None
    first_step_s: Optional[float] = None         # the first warm-up step (a compiled student compiles in it)
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    cache_hit_rate: Optional[float] = None

    @property
    def ms_per_step(self) -> List[float]:
        return [1e3 * s / self.steps for s in self.slot_s]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.ms_per_step)

    @property
    def samples_per_s(self) -> float:
        """At the median slot's pace."""
        return 1e3 * self.batch / self.median_ms

    @property
    def total_s(self) -> float:
        return sum(self.slot_s)

    @property
    def data_share(self) -> float:
        return self.data_s / self.total_s


class TimedRunner:
    """A runner with its batches and step counter: warmed up once, then timed slot by slot.
    ``first``: the batch of its first step, the same for every variant (so the first losses of
    the variants compare); the later ones come from ``batches``, shared by the variants."""

    def __init__(self, runner: StepRunner, batches: Iterator[Dict], first: Dict, *, batch: int, patches: int,
                 device: torch.device, seed: int = 0):
        self.runner, self.batches, self.first, self.batch, self.patches = runner, batches, first, batch, patches
        self.device, self.seed, self.i = device, seed, 0
        self.m: Optional[Measurement] = None
        self._cache0 = None

    def _step(self) -> "tuple[float, torch.Tensor]":
        wait = time.perf_counter()
        b = dict(self.first) if self.i == 0 else next(self.batches)
        waited = time.perf_counter() - wait
        b["noise"] = masking_noise(self.i, self.batch, self.patches, self.device, self.seed)
        self.i += 1
        return waited, self.runner(b)

    def warm_up(self, steps: int, timed_steps: int) -> None:
        """``steps`` untimed steps; memory is read here (see the module doc)."""
        cuda = self.device.type == "cuda"
        synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device) if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.m = Measurement(steps=timed_steps, batch=self.batch)
        start = time.perf_counter()
        for _ in range(steps):
            _, loss = self._step()
            if self.i == 1:
                self.m.first_loss = float(loss)  # waits for the device
                self.m.first_step_s = time.perf_counter() - start
        synchronize(self.device)
        if cuda:
            self.m.peak_memory_bytes = torch.cuda.max_memory_allocated(self.device) - before
            self.m.resident_memory_bytes = torch.cuda.memory_allocated(self.device) - before
        self._cache0 = self._cache_counts()

    def slot(self) -> None:
        """One timed slot of ``timed_steps`` steps; the device is waited for at its end."""
        m = self.m
        start = time.perf_counter()
        for _ in range(m.steps):
            waited, loss = self._step()
            m.data_s += waited
        synchronize(self.device)
        m.slot_s.append(time.perf_counter() - start)
        m.last_loss = float(loss)
        if m.first_loss != m.first_loss:  # no warm-up: the first timed step's loss
            m.first_loss = m.last_loss

    def finish(self) -> Measurement:
        counts = self._cache_counts()
        if counts is not None and self._cache0 is not None:
            hits, misses = counts[0] - self._cache0[0], counts[1] - self._cache0[1]
            self.m.cache_hit_rate = hits / max(hits + misses, 1)
        return self.m

    def _cache_counts(self) -> Optional[tuple]:
        info = self.runner.teacher.cache_info()
        return (info.hits, info.misses) if info.maxsize else None


def profile_steps(timed: TimedRunner, *, steps: int, out_dir: Path, name: str) -> Path:
    """A torch.profiler trace of ``steps`` more steps (Chrome trace + a table of the top
    kernels by device time), to find what limits a configuration."""
    from torch.profiler import ProfilerActivity, profile

    device = timed.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out_dir.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities, record_shapes=False) as prof:
        for _ in range(steps):
            timed._step()
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    (out_dir / f"{name}.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=40))
    trace = out_dir / f"{name}.trace.json"
    prof.export_chrome_trace(str(trace))
    return trace
