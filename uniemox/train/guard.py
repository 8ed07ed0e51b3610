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

    def record(self, skipped: Optional[str], step: int) -> None:
        """``skipped``: None for an applied step, else what was non-finite ("loss", "gradient")."""
        if not skipped:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteHalt(f"{self.consecutive} consecutive steps with a non-finite {skipped} "
                                f"(last at step {step + 1}); stopping. The last good checkpoint is kept; "
                                f"lower the learning rate or check the data, then resume.")
