"""Learning rate per iteration: linear warm-up, then half-cycle cosine to ``min_lr`` (MAE)."""
import math
from typing import Callable, NamedTuple, Optional

from uniemox.errors import UserError


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scaled_lr(blr: float, global_batch: int) -> float:
    """MAE's rule: lr = blr x global batch / 256."""
    return blr * global_batch / 256


def set_lr(optimizer, lr: float) -> None:
    """Apply ``lr`` to every group, honouring a group's ``lr_scale`` (layer-wise decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class StepPlan(NamedTuple):
    global_batch: int
    base_lr: float
    total_steps: int
    warmup_steps: int
    steps_per_epoch: Optional[int]   # None where the epoch was not counted


def plan_steps(optim, micro_batch: int, world_size: int, epoch_samples: Callable[[], Optional[int]]) -> StepPlan:
    """Global batch, lr (``optim.lr`` or MAE's scaling of ``optim.blr``), total and warm-up steps.
    Total: ``optim.max_steps``, else ``optim.epochs`` of ``epoch_samples()`` samples. Warm-up:
    ``optim.warmup_steps``, else ``optim.warmup_epochs`` where the epoch is counted (else none).
    ``epoch_samples()`` is called only where an epoch is needed (counting may read manifests)."""
    global_batch = micro_batch * optim.grad_accum * world_size
    base_lr = optim.lr if optim.lr is not None else scaled_lr(optim.blr, global_batch)
    samples = epoch_samples() if optim.max_steps <= 0 or optim.warmup_steps <= 0 else None
    steps_per_epoch = max(1, samples // global_batch) if samples else None
    if optim.max_steps > 0:
        total = optim.max_steps
    elif steps_per_epoch is None:
        raise UserError("optim.max_steps is 0 and the shards carry no manifest to count an epoch: "
                        "set optim.max_steps")
    else:
        total = math.ceil(optim.epochs * steps_per_epoch)
    warmup = optim.warmup_steps or (int(optim.warmup_epochs * steps_per_epoch) if steps_per_epoch else 0)
    return StepPlan(global_batch, base_lr, total, warmup, steps_per_epoch)
