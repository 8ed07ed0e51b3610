"""One micro-step of the UniEmoX pretrainer under a DeepSpeed engine, with the non-finite
guards of guard.py. Shared by launch/pretrain.py and the step benchmark."""
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from ..data.transforms import model_input
from .guard import all_ranks_finite, engine_checks_gradients, local_grad_norm, poison_gradients

LOSS_KEYS = ("loss", "reconstruction", "similarity", "contrastive")


def masking_noise(seed: int, step: int, micro: int, rank: int, batch: int, patches: int,
                  device: torch.device) -> torch.Tensor:
    """[2, N, L] noise (scene, person) drawn from (seed, step, micro, rank) alone, so a resumed
    run masks exactly as an uninterrupted one, whatever the global RNG went through."""
    gen = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 64 + micro) * 4096 + rank)
    return torch.rand(2, batch, patches, generator=gen).to(device, non_blocking=True)


@dataclass
class MicroStep:
    out: Dict[str, torch.Tensor]       # the pretrainer's outputs (losses, pred, mask)
    scene: torch.Tensor                # the scene view as fed, normalised (for reconstruction grids)
    losses: Optional[Dict[str, float]]  # None when the loss was non-finite (no backward ran)
    applied: bool                      # False: this micro-step's update was skipped


def micro_step(engine, batch: Dict, noise: torch.Tensor, device: torch.device, dtype: torch.dtype,
               nan_loss: bool = False, nan_grad: bool = False) -> MicroStep:
    """Forward, loss check (all ranks agree), backward, gradient check where the engine has
    none (fp32 ZeRO-0), step. ``nan_loss`` / ``nan_grad`` inject faults for the tests."""
    scene = model_input(batch["scene"], device, dtype)
    person = model_input(batch["person"], device, dtype) if "person" in batch else None
    out = engine(scene, person, batch["text"], noise[0], noise[1])
    loss = out["loss"] * float("nan") if nan_loss else out["loss"]
    if not all_ranks_finite(loss):
        return MicroStep(out, scene, None, False)  # nothing of this batch reaches the gradients
    losses = {k: float(out[k].detach()) for k in LOSS_KEYS if k in out}
    engine.backward(loss)
    if nan_grad:
        poison_gradients(engine)
    boundary = engine.is_gradient_accumulation_boundary()
    if boundary and not engine_checks_gradients(engine):
        norm = local_grad_norm(engine.module)
        if norm is not None and not torch.isfinite(norm):
            engine.zero_grad()
            return MicroStep(out, scene, losses, False)
    engine.step()
    return MicroStep(out, scene, losses, not (boundary and not engine.was_step_applied()))
