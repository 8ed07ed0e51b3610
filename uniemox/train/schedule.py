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


def plan_steps(optim, micro_batch: int, world_size: int, epoch_samples: Callable[[], Optional[int]]) -> StepPlan:
    """Global batch, lr (``optim.lr`` or MAE's scaling of ``optim.blr``), total and warm-up steps,
    from ``optim.max_steps`` / ``warmup_steps`` or else from epochs of ``epoch_samples()`` samples
    (called only then: counting may read shard manifests)."""
    global_batch = micro_batch * optim.grad_accum * world_size
    base_lr = optim.lr if optim.lr is not None else scaled_lr(optim.blr, global_batch)
    if optim.max_steps > 0:
        return StepPlan(global_batch, base_lr, optim.max_steps, optim.warmup_steps)
    samples = epoch_samples()
    if not samples:
        raise UserError("optim.max_steps is 0 and the shards carry no manifest to count an epoch: "
                        "set optim.max_steps")
    steps_per_epoch = max(1, samples // global_batch)
    warmup = optim.warmup_steps or int(optim.warmup_epochs * steps_per_epoch)
    return StepPlan(global_batch, base_lr, math.ceil(optim.epochs * steps_per_epoch), warmup)
