"""Learning rate per iteration: linear warm-up, then half-cycle cosine to ``min_lr`` (MAE)."""
import math


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
