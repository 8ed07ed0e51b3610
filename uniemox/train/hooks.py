"""Opt-in fault injection for the reliability tests, kept out of the production path: the trainer
calls ``install(trainer)`` once, which does nothing unless ``UNIEMOX_FAULT`` is set. Then it wraps
the trainer's parts (its task's forward, its checkpointer's commit, its step-end callbacks) to
inject, at the given (1-based) step:

    kill@step:N       SIGKILL this process when step N has ended (after its log, evaluation, checkpoint)
    kill@save:N       SIGKILL while saving step N's checkpoint: files written, not yet marked complete
    nan_loss@step:N   step N's loss is NaN
    nan_grad@step:N   step N's loss is finite but its gradient is NaN
    kill@export:FILE  SIGKILL an export once FILE is written into its temporary folder (FILE "swap":
                      once the older export is set aside, before the new one is renamed in)
    sigterm@step:N    SIGTERM to the highest rank only (the one rank in a world of one) when step N has ended
    sigterm@eval:N    SIGTERM to this process as the evaluation at step N starts
    slow_data@step:N  the first batch of step N arrives SLOW_DATA_S seconds late (a stalled data source)

Several faults are comma-separated: ``UNIEMOX_FAULT=nan_loss@step:3,nan_grad@step:5``.
"""
import os
import signal
import time
from typing import Callable, Dict, Optional, Set

from uniemox.errors import UserError

VARIABLE = "UNIEMOX_FAULT"
KINDS = ("kill@step", "kill@save", "nan_loss@step", "nan_grad@step", "sigterm@step", "sigterm@eval",
         "slow_data@step")
SLOW_DATA_S = 120.0
NAMED = ("kill@export",)  # faults at a named point, not a step


def parse(spec: str) -> Dict[str, Set]:
    faults: Dict[str, Set] = {k: set() for k in KINDS + NAMED}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, at = item.rpartition(":")
        if not (kind in KINDS and at.isdigit() or kind in NAMED and at):
            expected = [k + ":N" for k in KINDS] + [k + ":NAME" for k in NAMED]
            raise UserError(f"{VARIABLE}: bad fault {item!r} (expected one of {', '.join(expected)})")
        faults[kind].add(int(at) if kind in KINDS else at)
    return faults


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def export_progress() -> Optional[Callable[[str], None]]:
    """The progress callback an export writer calls after each file: kills at ``kill@export:FILE``."""
    spec = os.environ.get(VARIABLE)
    points = parse(spec)["kill@export"] if spec else set()
    return (lambda label: _kill() if label in points else None) if points else None


def _term() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def install(trainer) -> None:
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    faults = parse(spec)
    if faults["kill@step"]:
        trainer.step_end_callbacks.append(lambda step: _kill() if step in faults["kill@step"] else None)
    if faults["sigterm@step"] and trainer.run.rank == trainer.run.world - 1:
        trainer.step_end_callbacks.append(lambda step: _term() if step in faults["sigterm@step"] else None)
    if faults["sigterm@eval"]:
        evaluate = trainer.task.evaluate

        def signalled(engine, step):
            if step in faults["sigterm@eval"]:
                _term()
            return evaluate(engine, step)
        trainer.task.evaluate = signalled
    if faults["slow_data@step"]:
        endless = trainer.loader.endless

        def stalled():
            for batch in endless():
                if trainer.step + 1 in faults["slow_data@step"]:
                    faults["slow_data@step"].discard(trainer.step + 1)  # its first batch only
                    time.sleep(SLOW_DATA_S)
                yield batch
        trainer.loader.endless = stalled
    if faults["kill@save"]:
        commit = trainer.checkpointer.commit

        def commit_or_die(path, step, meta):
            if step in faults["kill@save"]:
                _kill()
            return commit(path, step, meta)
        trainer.checkpointer.commit = commit_or_die
    if faults["nan_loss@step"] or faults["nan_grad@step"]:
        forward = trainer.task.training_forward

        def poisoned(engine, batch, ctx):
            loss, scalars = forward(engine, batch, ctx)
            if ctx.step + 1 in faults["nan_loss@step"]:
                loss = loss * float("nan")
            if ctx.step + 1 in faults["nan_grad@step"]:
                # value + 0 * sqrt(0): the value is unchanged, d/dloss = 1 + 0 * inf = NaN, and every
                # parameter's gradient with it, whatever the ZeRO stage does with gradients
                loss = loss + 0.0 * (loss * 0.0).sqrt()
            return loss, scalars
        trainer.task.training_forward = poisoned

