"""The protocol between the one training loop (uniemox.train.trainer) and what it trains.

A task builds its data stream and its model(s), turns a batch into ``(loss, scalars)``,
evaluates, and says what its checkpoints and final outputs hold. The trainer owns everything
else: processes, precision, the DeepSpeed engine, schedule, accumulation, the non-finite guard,
reports, evaluation and checkpoint cadence, resume. It never knows a model's arguments.

The trainer calls, in this order::

    build_data()                      the training stream (a resumable ShardLoader)
    build_model()                     the module the engine trains
    epoch_samples()                   for epochs -> steps (None: unknown)
    param_groups(model), build_optimizer(groups, lr, ds)
    before_training(engine)           after the engine exists, before resume (seed the task's RNG streams)
    load_state_dict(state)            on resume: what state_dict() put into the checkpoint
    per micro-step: training_forward(engine, batch, ctx) -> (loss, {name: scalar})
    per step: after_step(step), and evaluate(step) when eval_every() says so
    finish(last_checkpoint)           after the final checkpoint: test, exports, the summary
"""
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from uniemox.train.engine import build_optimizer


@dataclass(frozen=True)
class MicroContext:
    """Where a micro-batch stands: every random draw a task makes from it (masking noise,
    caption choices, augmentation) depends on these alone, so a resumed run draws the same."""
    step: int   # optimizer steps completed before this one (0-based index of the step)
    micro: int  # micro-batch within the step (gradient accumulation)
    rank: int
    seed: int

    def seed_for(self, salt: int = 0) -> int:
        """An integer seed from (seed, step, micro, rank, salt)."""
        return ((self.seed * 1_000_003 + self.step) * 64 + self.micro) * 4096 + self.rank + salt

    def generator(self, salt: int = 0, device: torch.device = torch.device("cpu")) -> torch.Generator:
        """A generator on ``device`` seeded with ``seed_for(salt)``."""
        return torch.Generator(device=device).manual_seed(self.seed_for(salt))


class Task:
    name = "train"                 # the progress bar's label
    loss_name = "loss/loss"        # the scalar the progress bar shows as "loss"
    report_first_step = False      # also report step 1
    # a checkpoint resumes only where these (dotted prefixes of the marker's record: the run
    # config, "task", "zero_stage") are what they were, apart from ``resume_may_differ``
    resume_must_match = ("task", "zero_stage", "model")
    resume_may_differ = ("model.init", "model.attn_backend", "model.kernels", "model.grad_checkpointing")
    compilable = False             # train.compile applies: the module's forward takes tensors only

    def __init__(self, cfg, run):
        self.cfg, self.run = cfg, run
        self.writer = None         # the trainer's MetricsWriter, set before training

    def describe(self) -> str:
        """One line for the run's start-up log."""
        return self.name

    def log(self, level: int, msg: str, *args) -> None:
        """A line of the run's log, written once (by rank 0)."""
        if self.run.rank == 0:
            logging.getLogger(f"uniemox.{type(self).__name__}").log(level, msg, *args)

    def context(self, step: int, micro: int) -> MicroContext:
        return MicroContext(step, micro, self.run.rank, self.cfg.train.seed)

    # -- built once ------------------------------------------------------------------------------
    def build_data(self):
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def epoch_samples(self) -> Optional[int]:
        return None

    def param_groups(self, model: nn.Module) -> List[Dict]:
        from uniemox.train.param_groups import decay_groups
        return decay_groups(model, self.cfg.optim.weight_decay)

    def build_optimizer(self, groups: List[Dict], lr: float, ds: Dict):
        return build_optimizer(groups, lr, self.cfg.optim.betas, ds, self.run.device)

    def flops_per_sample(self) -> Optional[float]:
        """Training FLOPs per sample, for MFU (None: not reported)."""
        return None

    def before_training(self, engine) -> None:
        pass

    # -- every step -----------------------------------------------------------------------------
    def training_forward(self, engine, batch: Dict, ctx: MicroContext) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        pass

    def on_report(self, step: int, values: Dict[str, float]) -> None:
        pass

    def progress_fields(self, values: Dict[str, float]) -> Dict[str, str]:
        """Extra fields of the progress bar, from the report's values."""
        return {}

    # -- evaluation -----------------------------------------------------------------------------
    def eval_every(self, plan) -> Optional[int]:
        """Steps between evaluations given the trainer's StepPlan (0: the last step only, which
        is always evaluated); None: no evaluation."""
        return None

    def evaluate(self, engine, step: int) -> Dict[str, float]:
        return {}

    # -- checkpoints and the end ------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def checkpoint_meta(self, step: int) -> Dict[str, Any]:
        """What the checkpoint's marker records beside the run config (a model name, a card)."""
        return {}

    def finish(self, engine, step: int, last_checkpoint: str, skipped_steps: int) -> None:
        pass
