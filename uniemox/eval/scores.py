"""From a model's scores to what is reported: probabilities, the top-k classes of each sample,
the per-sample prediction rows of the evaluation reports and of predict."""
from typing import Dict, List, Sequence

import numpy as np
import torch


def to_probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


def top_k_rows(scores: np.ndarray, class_names: Sequence[str], k: int, multi_label: bool = False) -> List[List[Dict]]:
    """Per row: the k best classes as [{"label", "prob"}], highest first."""
    k = min(k, len(class_names))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[{"label": class_names[j], "prob": round(float(s[j]), 6)} for j in idx] for s, idx in zip(scores, order)]


def prediction_rows(keys: Sequence[str], scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    top_k: int = 3, multi_label: bool = False) -> List[Dict]:
    """One row per sample: key, true label(s), the top-k classes with their probabilities."""
    rows = top_k_rows(scores, class_names, top_k, multi_label)
    out = []
    for key, label, top in zip(keys, labels, rows):
        true = [class_names[i] for i in np.nonzero(label)[0]] if multi_label else class_names[int(label)]
        out.append({"key": key, "label": true, "top": top})
    return out
