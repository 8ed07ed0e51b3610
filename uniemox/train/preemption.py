"""Preemption: SIGTERM (what SLURM and Kubernetes send before SIGKILL) and SIGUSR1 (what
``sbatch --signal=USR1@120`` sends ahead of a time limit) end a training run with a checkpoint
at the step reached and exit code ``EXIT_CODE``, which a job script turns into a requeue.

The handler only notes the signal, except inside an ``interruptible()`` region (the wait for a
step's first batch; an evaluation in a world of one), where it abandons what is under way at
once: nothing of the step has happened yet there, or the evaluation is redone on resume. A
save under way always finishes. The ranks agree on the step to stop at with ``agreed()``, one
all-reduce (MAX) of a flag at the start of every step on a gloo group of its own, on host
memory: no device sync, and it follows the step's data wait, so one rank receiving the signal
stops them all at the same step. DataLoader workers ignore the job's signals (data/loader.py: a
SIGTERM ends one only when its parent sends it; a fork that still has this handler ignores
them too): their parent ends them. A second
signal is noted and ignored, the save goes on; if the grace period runs out, SIGKILL leaves the
previous complete checkpoint (the saves are atomic).
"""
import contextlib
import logging
import os
import signal
import threading
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

from uniemox.data.loader import STOP_SIGNALS

logger = logging.getLogger(__name__)
SIGNALS = STOP_SIGNALS
EXIT_CODE = 4


class Preempted(Exception):
    """The run stopped on a signal after saving (``checkpoint``: its path, None if there was
    nothing to save yet); the entry points exit with EXIT_CODE."""

    def __init__(self, signal_name: str, step: int, checkpoint: Optional[str]):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        saved = f"checkpoint {checkpoint}" if checkpoint else "nothing trained yet, nothing saved"
        super().__init__(f"stopped by {signal_name} at step {step} ({saved}); --resume auto continues the run")


class Interrupted(BaseException):
    """Raised by the handler inside an interruptible region (a BaseException: no ``except
    Exception`` of a data or evaluation loop swallows it)."""


class PreemptionWatch:
    def __init__(self):
        self.pid = os.getpid()
        self.signal: Optional[str] = None
        self.group = None
        self._interruptible = False
        self._flag = np.zeros(1, np.int32)  # the agreement's buffer, in host memory
        self._flag_tensor = torch.from_numpy(self._flag)
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # Python's handlers live there only
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def join(self, world: int) -> None:
        """Collective: the agreement's own gloo group, once the process group exists."""
        if world > 1:
            self.group = dist.new_group(backend="gloo")

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:
            return  # a forked DataLoader worker: the parent ends it
        name = signal.Signals(signum).name
        if self.signal is not None:
            logger.warning("%s received while stopping on %s: ignored, the checkpoint is being made", name,
                           self.signal)
            return
        self.signal = name
        logger.warning("%s received: the run stops with a checkpoint at the step reached", name)
        if self._interruptible:
            raise Interrupted()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A region the signal abandons at once (raises Interrupted, also when already signalled)."""
        if self.signal is not None:
            raise Interrupted()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def settle(self) -> None:
        """Ends the interruptible region under way: what follows (its results being logged and
        kept) runs to its end, so nothing of it is logged twice."""
        self._interruptible = False

    def agreed(self) -> bool:
        """Collective: whether any rank has been signalled."""
        if self.group is None:
            return self.signal is not None
        self._flag[0] = int(self.signal is not None)
        dist.all_reduce(self._flag_tensor, op=dist.ReduceOp.MAX, group=self.group)
        if self._flag[0] and self.signal is None:
            self.signal = "a signal to another rank"
        return bool(self._flag[0])

    def close(self) -> None:
        """The handlers that were there before (a process may run several trainers)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
