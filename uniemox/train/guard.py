"""Keeping non-finite losses and gradients away from the optimizer, without stalling the device.

Nothing is read back in a training step. A non-finite loss is backpropagated like any other:
its gradients are non-finite, and the update is skipped where gradients are checked:

* ZeRO-1/2/3 and bf16/fp16 engines check their gradients themselves (DeepSpeed's overflow check,
  which reads its flag on the host) and report it (``engine.was_step_applied()``);
* the plain fp32 ZeRO-0 engine does not (it would apply NaN): there the gradients are checked on
  the device (one multi-tensor pass) and the flag handed to the fused AdamW as its ``found_inf``,
  which skips the update on the device (the optimizer's mechanism for mixed-precision scaling). An
  optimizer without that mechanism (LARS) is checked on the host instead.

Skips are counted on the device (the current run of skipped steps, the longest since the last
read, the total) and read once per report and before each checkpoint: when ``max_consecutive``
steps in a row were skipped the run stops with ``NonFiniteHalt``, naming what was non-finite.
"""

import torch


class NonFiniteHalt(RuntimeError):
    pass


def engine_checks_gradients(engine) -> bool:
    return engine.zero_optimization_stage() > 0 or engine.bfloat16_enabled() or engine.fp16_enabled()


def skips_on_device(optimizer) -> bool:
    """Whether ``optimizer.step()`` honours a ``found_inf`` flag (torch's fused Adam/AdamW)."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and bool(optimizer.defaults.get("fused"))


def non_finite_gradients(model: torch.nn.Module, zero: torch.Tensor) -> torch.Tensor:
    """1.0 (0-dim, on the device) where any .grad holds an inf or NaN, else 0.0: one multi-tensor
    pass, the check torch's GradScaler makes (two thirds of the time of a gradient norm)."""
    found = zero.reshape(1).clone()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones_like(found))
    return found.reshape(())


class NonFiniteGuard:
    def __init__(self, max_consecutive: int, device: torch.device):
        self.max_consecutive = max_consecutive
        zeros = dict(device=device, dtype=torch.float32)
        self.one, self.zero = torch.ones((), **zeros), torch.zeros((), **zeros)
        self.consecutive = torch.zeros((), **zeros)
        self.longest = torch.zeros((), **zeros)   # the longest run since the last check
        self.count = torch.zeros((), **zeros)     # skips since the run (re)started
        self.halt_step = torch.zeros((), **zeros)  # the step at which a run reached max_consecutive
        self.halt_loss = torch.zeros((), **zeros)  # 1: that step's loss was non-finite, else its gradient
        self.base = 0                             # skips before a resume

    def record(self, skipped: torch.Tensor, loss_bad: torch.Tensor, step: int) -> None:
        """``skipped``, ``loss_bad``: 0-dim 0/1 tensors on the device; ``step``: 0-based index."""
        self.consecutive = (self.consecutive + 1) * skipped
        self.longest = torch.maximum(self.longest, self.consecutive)
        self.count = self.count + skipped
        reached = (self.consecutive >= self.max_consecutive) & (self.halt_step == 0)
        self.halt_step = torch.where(reached, torch.full_like(self.halt_step, step + 1), self.halt_step)
        self.halt_loss = torch.where(reached, loss_bad, self.halt_loss)

    def check(self) -> None:
        """Read the counters (a report or a checkpoint is due): stop when a run of skips got too long."""
        longest, halt_step, halt_loss = (float(v) for v in torch.stack([self.longest, self.halt_step,
                                                                          self.halt_loss]).tolist())
        if longest >= self.max_consecutive:
            raise NonFiniteHalt(f"{self.max_consecutive} consecutive steps with a non-finite "
                                f"{'loss' if halt_loss else 'gradient'} (last at step {int(halt_step)}); stopping. The "
                                f"last good checkpoint is kept; lower the learning rate or check the data, then resume.")
        self.longest = self.consecutive.clone()

    @property
    def total(self) -> int:
        """Skipped steps over the whole run (a read of the device counter)."""
        return self.base + int(self.count.item())
