"""The probe grid's parts below the task: its heads (one per blr x weight decay), their optimizer
groups, and each head's best validation score with the weights that reached it.

Every head has its own parameter groups in the one optimizer (MAE's probe groups: the weight
matrix decayed and LARS-adapted, the bias neither), with ``lr_scale`` = the head's lr over the
run's base lr, so the trainer's warm-up + cosine schedule (``set_lr``) drives every head at its
own peak. The heads share nothing but the frozen features: the loss is the sum of their losses,
so each head's gradient is the one it would get alone.
"""
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch

from uniemox.errors import UserError
from uniemox.train.schedule import scaled_lr

from .heads import ProbeGrid
from .recipe import param_groups


@dataclass(frozen=True)
class GridHead:
    index: int
    blr: float
    weight_decay: float
    lr: float           # peak lr: blr x global batch / 256

    @property
    def label(self) -> str:
        return f"blr{self.blr:g}_wd{self.weight_decay:g}"


def grid_heads(blrs: Sequence[float], weight_decays: Sequence[float], global_batch: int) -> List[GridHead]:
    """The heads, weight decay outer and blr inner (the table's order)."""
    if not blrs or not weight_decays:
        raise UserError("the probe grid needs at least one value in probe.blrs and in probe.weight_decays")
    if any(b <= 0 for b in blrs) or any(w < 0 for w in weight_decays):
        raise UserError(f"probe.blrs must be > 0 and probe.weight_decays >= 0, got {list(blrs)} and "
                        f"{list(weight_decays)}")
    if len(set(blrs)) != len(blrs) or len(set(weight_decays)) != len(weight_decays):
        raise UserError(f"probe.blrs and probe.weight_decays must not repeat a value, got {list(blrs)} and "
                        f"{list(weight_decays)}")
    pairs = [(b, w) for w in weight_decays for b in blrs]
    return [GridHead(i, b, w, scaled_lr(b, global_batch)) for i, (b, w) in enumerate(pairs)]


def grid_groups(heads_module: torch.nn.ModuleList, heads: Sequence[GridHead]) -> List[Dict]:
    """The optimizer groups of every head (MAE's probe groups), each with its peak lr."""
    return [dict(group, head_lr=head.lr) for head in heads
            for group in param_groups(heads_module[head.index], True, head.weight_decay, 1.0)]


def scale_to(groups: List[Dict], base_lr: float) -> List[Dict]:
    """Each group's ``lr_scale``: its head's lr over the run's base lr (what the schedule scales)."""
    if base_lr <= 0:
        raise UserError("the probe grid scales each head's lr against the run's lr: optim.blr (or optim.lr) "
                        "must be > 0")
    return [dict({k: v for k, v in g.items() if k != "head_lr"}, lr_scale=g["head_lr"] / base_lr) for g in groups]


class GridBest:
    """Per head: the best validation score, its step, and the head's weights then (a few KB each)."""

    def __init__(self, count: int):
        self.records: List[Optional[Dict]] = [None] * count

    def update(self, values: Sequence[float], step: int, state: Dict[str, torch.Tensor]) -> None:
        for index, value in enumerate(values):
            record = self.records[index]
            if record is None or value > record["metric"]:
                weights = {k: v.detach().cpu().clone() for k, v in ProbeGrid.head_state(state, index).items()}
                self.records[index] = {"metric": float(value), "step": step, "state": weights}

    def grid_state(self) -> Dict[str, torch.Tensor]:
        """Every head's best weights as one ProbeGrid state dict."""
        return {f"heads.{i}.{k[len('head.'):]}": v for i, r in enumerate(self.records) for k, v in r["state"].items()}

    def rows(self, heads: Sequence[GridHead], metric: str) -> List[Dict]:
        return [dict(asdict(h), **{f"val_{metric}": r["metric"] if r else None, "best_step": r["step"] if r else None})
                for h, r in zip(heads, self.records)]

    def state_dict(self) -> Dict:
        return {"records": self.records}

    def load_state_dict(self, state: Dict) -> None:
        self.records = state["records"]
