"""One micro-step under a DeepSpeed engine with the non-finite rules of guard.py, and no read back
to the host: forward (the task's), backward, step. The task's forward returns ``(loss, scalars)``:
the loss to backpropagate and the named scalars to report (detached; averaged by the trainer
over the micro-steps whose loss was finite)."""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from .guard import engine_checks_gradients, non_finite_gradients, skips_on_device

Forward = Callable[[], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


@dataclass
class MicroResult:
    scalars: Dict[str, torch.Tensor]
    loss_finite: torch.Tensor          # 0-dim bool on the device
    skipped: Optional[torch.Tensor]    # at the accumulation boundary: 0/1 on the device, was the update skipped


def guarded_micro_step(engine, forward: Forward, one: torch.Tensor, zero: torch.Tensor) -> MicroResult:
    """``one`` / ``zero``: 0-dim float tensors on the device (a host flag becomes one of them
    without a copy)."""
    loss, scalars = forward()
    loss_finite = torch.isfinite(loss.detach()).all()
    engine.backward(loss)  # a non-finite loss gives non-finite gradients: the update is skipped below
    boundary = engine.is_gradient_accumulation_boundary()
    skipped = None
    if boundary and not engine_checks_gradients(engine):  # fp32 ZeRO-0: the check is ours
        bad = non_finite_gradients(engine.module, zero)
        if skips_on_device(engine.optimizer):
            engine.optimizer.found_inf = bad  # the fused AdamW leaves weights and state as they were
            skipped = bad
        elif bool(bad):  # another optimizer: one read per step, the only way it can skip
            engine.zero_grad()
            return MicroResult({k: v.detach() for k, v in scalars.items()}, loss_finite, one)
        else:
            skipped = zero
    engine.step()
    if boundary and skipped is None:
        skipped = zero if engine.was_step_applied() else one  # DeepSpeed's own check, read on the host
    return MicroResult({k: v.detach() for k, v in scalars.items()}, loss_finite, skipped)
