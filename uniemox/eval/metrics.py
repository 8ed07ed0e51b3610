"""Classification metrics from scores: single-label (top-k, per-class, macro F1, confusion
matrix) and multi-label (average precision per category, mean AP).

Conventions (those of sklearn, so results can be cross-checked):
* confusion[i][j] = samples of true class i predicted as class j (argmax of the scores).
* per class: precision = TP / predicted (0 when nothing was predicted), recall = TP / support,
  F1 = 2PR / (P + R) (0 when P + R = 0), accuracy = (TP + TN) / N one-vs-rest.
* macro F1 = mean F1 over the classes that occur in the labels or the predictions
  (sklearn's ``f1_score(average="macro")``); balanced accuracy = mean recall over classes
  with support.
* AP (per category) = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds, highest
  first (sklearn's ``average_precision_score``, no interpolation); a category without a
  positive sample has no AP (None) and is left out of the mean.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the k highest scores (k capped at the class count)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def classification_metrics(scores, labels, class_names: Sequence[str]) -> Dict:
    """Metrics of single-label predictions; ``scores`` [N, C] (logits or probabilities)."""
    scores, labels = _np(scores).astype(np.float64), _np(labels).astype(np.int64)
    n, c = scores.shape
    if n == 0:
        raise ValueError("no predictions to score")
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for {c} score columns")
    preds = scores.argmax(axis=1)
    cm = confusion_matrix(labels, preds, c)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    per_class, f1s, recalls = {}, [], []
    for i, name in enumerate(class_names):
        precision, recall = _ratio(tp[i], predicted[i]), _ratio(tp[i], support[i])
        f1 = _ratio(2 * precision * recall, precision + recall)
        tn = n - support[i] - predicted[i] + tp[i]
        per_class[name] = {"support": int(support[i]), "predicted": int(predicted[i]),
                           "accuracy": _ratio(tp[i] + tn, n), "precision": precision,
                           "recall": recall if support[i] else None, "f1": f1}
        if support[i] or predicted[i]:
            f1s.append(f1)
        if support[i]:
            recalls.append(recall)
    return {"task": "single_label", "num_samples": int(n), "classes": list(class_names),
            "top1": float((preds == labels).mean()), "top3": topk_accuracy(scores, labels, 3),
            "macro_f1": float(np.mean(f1s)), "balanced_accuracy": float(np.mean(recalls)),
            "per_class": per_class, "confusion_matrix": cm.tolist()}


def average_precision(scores, targets) -> Optional[float]:
    """Non-interpolated AP of one category (see module doc); None without positives."""
    scores, targets = _np(scores).astype(np.float64), _np(targets).astype(np.float64)
    positives = targets.sum()
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], targets[order]
    tps, fps = np.cumsum(t), np.cumsum(1.0 - t)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each distinct score
    precision = tps[last] / (tps[last] + fps[last])
    recall = tps[last] / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multilabel_metrics(scores, targets, class_names: Sequence[str]) -> Dict:
    """Per-category AP and mean AP; ``scores`` [N, C] (logits or sigmoid), ``targets`` [N, C] in {0, 1}."""
    scores, targets = _np(scores), _np(targets)
    if scores.shape != targets.shape or scores.shape[1] != len(class_names):
        raise ValueError(f"scores {scores.shape}, targets {targets.shape}, {len(class_names)} class names")
    per_class: Dict[str, Dict] = {}
    aps: List[float] = []
    for i, name in enumerate(class_names):
        ap = average_precision(scores[:, i], targets[:, i])
        per_class[name] = {"support": int(targets[:, i].sum()), "ap": ap}
        if ap is not None:
            aps.append(ap)
    return {"task": "multi_label", "num_samples": int(scores.shape[0]), "classes": list(class_names),
            "mAP": float(np.mean(aps)) if aps else None, "per_class": per_class}


def headline(metrics: Dict) -> Dict[str, float]:
    """The scalars worth a TensorBoard curve (per-class values under their class name)."""
    if metrics["task"] == "multi_label":
        out = {"mAP": metrics["mAP"]}
        out.update({f"ap/{c}": v["ap"] for c, v in metrics["per_class"].items()})
    else:
        out = {k: metrics[k] for k in ("top1", "top3", "macro_f1", "balanced_accuracy")}
        out.update({f"recall/{c}": v["recall"] for c, v in metrics["per_class"].items()})
    out.update(samples=metrics["num_samples"], skipped=sum((metrics.get("skipped") or {}).values()))
    return {k: float(v) for k, v in out.items() if v is not None}


def primary(metrics: Dict) -> float:
    """The number that picks the best checkpoint: top-1, or mean AP for multi-label."""
    value = metrics["mAP"] if metrics["task"] == "multi_label" else metrics["top1"]
    return float(value) if value is not None else float("-inf")
