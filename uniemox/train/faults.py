"""Fault injection for the resume tests: ``UNIEMOX_FAULT=kill@step:6`` or ``kill@save:8``
SIGKILLs this process when it reaches that point (a step's end, or a checkpoint whose files
are written but not yet marked complete). Unset in normal runs: one dict lookup per call."""
import os
import signal


def maybe_kill(point: str, step: int) -> None:
    spec = os.environ.get("UNIEMOX_FAULT")
    if spec and spec == f"kill@{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
