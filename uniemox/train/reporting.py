"""The trainer's report: the scalars of every micro-step averaged over the log interval, plus
throughput, learning rate, gradient norm, health counters and memory, written to TensorBoard and
metrics.jsonl (MetricsWriter) and shown on a progress bar, every ``every`` steps and at the end.

Scalars accumulate on their device (float64, so the average equals a Python sum of the same
float32 values; micro-steps whose loss was non-finite are left out) and are read only when a
report is written: one read per interval, not per step. The step timer synchronises the device
then too, not per step.
"""
import sys
import zlib
from typing import Callable, Dict, List, Optional

import torch

from .metrics import MetricsWriter, StepTimer, peak_memory_gib


class Reporter:
    def __init__(self, writer: MetricsWriter, every: int, total_steps: int, first_step: bool = False,
                 progress: Optional[str] = None, initial_step: int = 0):
        """``first_step``: also report step 1; ``progress``: the bar's label (None: no bar)."""
        self.writer, self.every, self.total, self.first_step = writer, every, total_steps, first_step
        self.timer = StepTimer()
        self.bar = None
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=initial_step, desc=progress, dynamic_ncols=True,
                            mininterval=0.5 if sys.stderr.isatty() else 30)  # log files: a line per 30 s
        self._clear()

    def _clear(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.count: Optional[torch.Tensor] = None
        self.digests: List[int] = []

    def batch(self, keys, waited_s: float) -> None:
        """A micro-batch arrived after ``waited_s``: which samples it held (a checksum of its
        keys, for resume checks)."""
        self.timer.waited(waited_s)
        self.digests.append(zlib.crc32("\n".join(keys).encode()))

    def add(self, scalars: Dict[str, torch.Tensor], keep: torch.Tensor) -> None:
        """``keep``: 0-dim bool on the device, False for a micro-step whose loss was non-finite."""
        for key, value in scalars.items():
            value = torch.where(keep, value.reshape(()).double(), 0.0)
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        kept = keep.double()
        self.count = kept if self.count is None else self.count + kept

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total or (self.first_step and step == 1)

    def step_done(self, step: int, samples: int, device: torch.device, extra: Callable[[], Dict[str, float]],
                  postfix: Callable[[Dict[str, float]], Dict[str, str]]) -> Optional[Dict[str, float]]:
        """After every optimizer step: the report's values when one was written, else None.
        ``extra()`` gives the values of the trainer (lr, health, perf inputs), ``postfix`` the
        bar's fields."""
        self.timer.step_done(samples)
        values = None
        if self.due(step):
            self.timer.synchronize(device)
            count = float(self.count) if self.count is not None else 0.0
            # no finite micro-step in the interval: no loss to report (rather than a mean of nothing)
            values = {k: float(v) / count for k, v in self.sums.items()} if count else {}
            values.update(extra())
            memory = peak_memory_gib(device)
            if memory is not None:
                values["perf/peak_memory_gib"] = memory
            self.writer.scalars(values, step, extra={"batch_crc32": self.digests})
            if self.bar is not None:
                self.bar.set_postfix(postfix(values))
            self._clear()
            self.timer.reset()
        if self.bar is not None:
            self.bar.update(1)
        return values

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
