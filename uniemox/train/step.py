"""One guarded micro-step under a DeepSpeed engine: forward (the task's), the non-finite rules of
guard.py, backward, step. The task's forward returns ``(loss, scalars)``: the loss to
backpropagate and the named scalars to report (detached; averaged by the trainer)."""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from .guard import all_ranks_finite, engine_checks_gradients, local_grad_norm

Forward = Callable[[], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


@dataclass
class MicroResult:
    scalars: Optional[Dict[str, torch.Tensor]]  # None when the loss was non-finite (no backward ran)
    skipped: Optional[str]                       # None, or what was non-finite: "loss" | "gradient"


def guarded_micro_step(engine, forward: Forward) -> MicroResult:
    """Forward, loss check (all ranks agree), backward, gradient check where the engine has
    none (fp32 ZeRO-0), step. Nothing of a non-finite micro-step reaches the weights."""
    loss, scalars = forward()
    if not all_ranks_finite(loss):
        return MicroResult(None, "loss")
    scalars = {k: v.detach() for k, v in scalars.items()}
    engine.backward(loss)
    boundary = engine.is_gradient_accumulation_boundary()
    if boundary and not engine_checks_gradients(engine):
        norm = local_grad_norm(engine.module)
        if norm is not None and not torch.isfinite(norm):
            engine.zero_grad()
            return MicroResult(scalars, "gradient")
    engine.step()
    applied = not (boundary and not engine.was_step_applied())
    return MicroResult(scalars, None if applied else "gradient")
