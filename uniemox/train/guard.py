"""Keeping non-finite losses and gradients away from the optimizer.

* Loss: checked on every rank and agreed by all-reduce before backward; a non-finite loss
  skips backward and step on all ranks.
* Gradient: ZeRO stages 1-3, and any bf16/fp16 engine, check gradients for inf/NaN themselves
  and skip the update (``engine.was_step_applied()``). The plain fp32 ZeRO-0 engine does not
  (it applies NaN), so there the gradients are checked here before ``engine.step()``.
After ``max_consecutive`` skips in a row the run stops with ``NonFiniteHalt``.
"""
from typing import Optional

import torch
import torch.distributed as dist


class NonFiniteHalt(RuntimeError):
    pass


def all_ranks_finite(value: torch.Tensor) -> bool:
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def engine_checks_gradients(engine) -> bool:
    return engine.zero_optimization_stage() > 0 or engine.bfloat16_enabled() or engine.fp16_enabled()


def local_grad_norm(model: torch.nn.Module) -> Optional[torch.Tensor]:
    """L2 norm of all .grad tensors (complete on every rank under ZeRO-0, after all-reduce)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())


class NonFiniteGuard:
    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def record(self, skipped: bool, step: int, what: str = "") -> None:
        if not skipped:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteHalt(f"{self.consecutive} consecutive steps with a non-finite {what or 'loss'} "
                                f"(last at step {step}); stopping. The last good checkpoint is kept; "
                                f"lower the learning rate or check the data, then resume.")


def poison_gradients(engine) -> None:
    """Testing aid: NaN into a gradient after backward. ZeRO-0 keeps ``.grad`` on the module;
    ZeRO-1/2 move gradients into the optimizer's partitions, so every rank writes NaN into its
    own flat gradient partition there (the engine's overflow check must then catch it)."""
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    if grads:
        grads[0].mul_(float("nan"))
        return
    optimizer = engine.optimizer
    for name in ("averaged_gradients", "single_partition_of_fp32_groups"):
        holder = getattr(optimizer, name, None)
        if isinstance(holder, dict) and holder:
            next(iter(holder.values()))[0].mul_(float("nan"))
            return
        if isinstance(holder, list) and holder and getattr(holder[0], "grad", None) is not None:
            holder[0].grad.mul_(float("nan"))
            return
    raise RuntimeError("found no gradient to poison in this engine")
