"""Run a model over an evaluation split and score it (every rank its shards, results gathered).

Scores are probabilities: softmax over classes, or sigmoid per category for multi-label
heads (BCE); metrics use argmax / ranking, so the choice does not change them.
"""
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from uniemox.data.transforms import model_input

from .metrics import classification_metrics, multilabel_metrics
from .scores import prediction_rows, to_probabilities


@dataclass
class Predictions:
    keys: List[str]
    scores: np.ndarray      # [N, C] probabilities ([N, H, C] for H heads)
    labels: np.ndarray      # [N] (single-label) or [N, C] multi-hot targets

    def metrics(self, class_names: Sequence[str], multi_label: bool) -> Dict:
        if multi_label:
            return multilabel_metrics(self.scores, self.labels, class_names)
        return classification_metrics(self.scores, self.labels, class_names)

    def rows(self, class_names: Sequence[str], top_k: int, multi_label: bool) -> List[Dict]:
        return prediction_rows(self.keys, self.scores, self.labels, class_names, top_k, multi_label)

    def head(self, index: int) -> "Predictions":
        """One head's predictions where a model scores with several heads (scores [N, H, C])."""
        return Predictions(self.keys, self.scores[:, index], self.labels)


@torch.no_grad()
def predict_loader(forward: Callable[[torch.Tensor], torch.Tensor], loader, device: torch.device,
                   multi_label: bool, dtype: Optional[torch.dtype] = None) -> Predictions:
    """``forward(images) -> logits`` over every batch of ``loader`` on this rank (uint8 views
    normalised on the device first)."""
    keys, scores, labels = [], [], []
    for batch in loader:
        images = model_input(batch["image"], device, torch.float32)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = forward(images)
        scores.append(to_probabilities(logits, multi_label).cpu())
        labels.append(batch["targets"] if multi_label else batch["label"])
        keys += list(batch["key"])
    if not keys:
        return Predictions([], np.zeros((0, 0), np.float32), np.zeros((0,), np.int64))
    return Predictions(keys, torch.cat(scores).numpy(), torch.cat(labels).numpy())


def sum_counts(counts: Dict[str, int]) -> Dict[str, int]:
    """Per-kind counts summed over all ranks (kinds as this rank names them); nonzero ones only."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: List[Optional[Dict]] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, dict(counts))
        total: Dict[str, int] = {}
        for part in parts:
            for kind, n in part.items():
                total[kind] = total.get(kind, 0) + n
        counts = total
    return {k: int(v) for k, v in counts.items() if v}


def gather(pred: Predictions) -> Predictions:
    """All ranks' predictions on every rank (rank order); a no-op in a world of one."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return pred
    parts: List[Optional[Predictions]] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, pred)
    parts = [p for p in parts if p.keys]
    return Predictions([k for p in parts for k in p.keys], np.concatenate([p.scores for p in parts]),
                       np.concatenate([p.labels for p in parts]))


def evaluate_split(scorer, shards: str, split: str, batch_size: int, top_k: int = 3,
                   out_dir: Optional[str] = None) -> Dict:
    """Metrics of a ``Scorer`` (scorers.py) on one split of a labelled shard set, the person view
    taken from the stored boxes; with ``out_dir``, the report (JSON, confusion PNG, predictions)."""
    from uniemox.data import load_manifest, shard_urls
    from uniemox.errors import UserError

    from .report import write_report
    from .shard_views import iter_view_batches

    classes = load_manifest(shards)["classes"]
    if len(scorer.classes) != len(classes):
        raise UserError(f"the model has {len(scorer.classes)} classes, the shard set {len(classes)}")
    multi = scorer.multi_label
    keys, scores, labels, skipped = [], [], [], Counter()
    for batch in iter_view_batches(shard_urls(shards, (split,)), scorer.image_size, batch_size,
                                   num_classes=len(classes) if multi else None, class_count=len(classes),
                                   counters=skipped):
        scores.append(scorer.score(batch["scene"], batch["person"], batch["has_person"]).float().cpu())
        labels.append(batch["targets"] if multi else batch["label"])
        keys += batch["key"]
    if not keys:
        raise UserError(f"no readable sample in split {split!r} of {shards}")
    pred = Predictions(keys, torch.cat(scores).numpy(), torch.cat(labels).numpy())
    metrics = dict(pred.metrics(classes, multi), mode="zero_shot" if scorer.zero_shot else "model",
                   skipped={k: v for k, v in skipped.items() if v})
    if out_dir:
        metrics["report"] = write_report(metrics, out_dir, split, predictions=pred.rows(classes, top_k, multi),
                                         echo=False)
    return metrics
