"""Run a model over an evaluation split and score it (every rank its shards, results gathered).

Scores are probabilities: softmax over classes, or sigmoid per category for multi-label
heads (BCE); metrics use argmax / ranking, so the choice does not change them.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .metrics import classification_metrics, multilabel_metrics
from .report import prediction_rows


@dataclass
class Predictions:
    keys: List[str]
    scores: np.ndarray      # [N, C] probabilities
    labels: np.ndarray      # [N] (single-label) or [N, C] multi-hot targets

    def metrics(self, class_names: Sequence[str], multi_label: bool) -> Dict:
        if multi_label:
            return multilabel_metrics(self.scores, self.labels, class_names)
        return classification_metrics(self.scores, self.labels, class_names)

    def rows(self, class_names: Sequence[str], top_k: int, multi_label: bool) -> List[Dict]:
        return prediction_rows(self.keys, self.scores, self.labels, class_names, top_k, multi_label)


def to_probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


@torch.no_grad()
def predict_loader(forward: Callable[[torch.Tensor], torch.Tensor], loader, device: torch.device,
                   multi_label: bool, dtype: Optional[torch.dtype] = None) -> Predictions:
    """``forward(images) -> logits`` over every batch of ``loader`` on this rank."""
    keys, scores, labels = [], [], []
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = forward(images)
        scores.append(to_probabilities(logits, multi_label).cpu())
        labels.append(batch["targets"] if multi_label else batch["label"])
        keys += list(batch["key"])
    if not keys:
        return Predictions([], np.zeros((0, 0), np.float32), np.zeros((0,), np.int64))
    return Predictions(keys, torch.cat(scores).numpy(), torch.cat(labels).numpy())


def gather(pred: Predictions) -> Predictions:
    """All ranks' predictions on every rank (rank order); a no-op in a world of one."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return pred
    parts: List[Optional[Predictions]] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, pred)
    parts = [p for p in parts if p.keys]
    return Predictions([k for p in parts for k in p.keys], np.concatenate([p.scores for p in parts]),
                       np.concatenate([p.labels for p in parts]))
