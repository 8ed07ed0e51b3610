"""Model EMA for fine-tuning: timm's ``ModelEmaV3`` over the DeepSpeed engine's module.

* Updated once per optimizer step (the task's ``after_step``), after the engine has applied it,
  from the module's weights: the fp32 weights under fp32, the bf16/fp16 weights the forward uses
  under mixed precision (averaged into an fp32 copy, which holds updates far below bf16's
  resolution). A step the non-finite guard skipped left the weights as they were; the EMA still
  moves towards them, as timm's training loop does (skipping it would need a read on the host).
* ZeRO-1/2 keep a full, identical copy of the module on every rank, so every rank's EMA is the
  same; ZeRO-3 partitions the module's parameters (each rank holds a shard): refused.
* Checkpoints: rank 0 saves the EMA (one copy, not one per rank); on resume the other ranks get
  it by broadcast, so a resumed run averages exactly as an uninterrupted one.
* The decay: ``train.ema_decay``; with ``train.ema_warmup`` timm's warm-up (decay 1 - (1 + step)^-2/3,
  capped at ema_decay: 0.95 at step 80, 0.99 at step 1000), so a short run's EMA is not its
  initial weights.
"""
from typing import Dict, Optional

import torch
import torch.distributed as dist

from uniemox.errors import UserError


class FinetuneEma:
    def __init__(self, engine, decay: float, warmup: bool, zero_stage: int):
        from timm.utils import ModelEmaV3

        if zero_stage == 3:
            raise UserError("train.ema: ZeRO-3 partitions the module's parameters across ranks, so no rank "
                            "holds the weights to average; use ZeRO-0/1/2 (configs/zero2.json) or train.ema=false")
        self.ema = ModelEmaV3(engine.module, decay=decay, use_warmup=warmup, dtype=torch.float32)
        self.ema.module.requires_grad_(False)
        self.source = engine.module

    @property
    def module(self) -> torch.nn.Module:
        return self.ema.module

    def update(self, step: int) -> None:
        """After optimizer step ``step`` (1-based): no read back to the host."""
        self.ema.update(self.source, step=step)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: Optional[Dict[str, torch.Tensor]], world: int) -> None:
        """Collective: rank 0 loads its checkpointed EMA, the others receive it."""
        if state is not None:
            self.ema.module.load_state_dict(state)
        if world > 1:
            for tensor in self.ema.module.state_dict().values():
                dist.broadcast(tensor, 0)
