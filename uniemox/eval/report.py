"""Metrics out: a console summary with the confusion matrix, JSON, a PNG, TensorBoard,
and per-sample predictions (JSON lines) in the run directory."""
import json
import os
from typing import Dict, List, Optional

import numpy as np

from uniemox.io import atomic_write_json, atomic_write_text

from .metrics import headline


def scored(metrics: Dict) -> str:
    """How many samples were scored, and how many damaged ones were skipped, by kind."""
    skipped = {k: v for k, v in (metrics.get("skipped") or {}).items() if v}
    if not skipped:
        return f"samples {metrics['num_samples']}"
    kinds = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(skipped.items()))
    return f"samples {metrics['num_samples']} scored, {sum(skipped.values())} skipped ({kinds})"


def format_summary(metrics: Dict, title: str = "") -> str:
    """Headline numbers, the per-class table and (single-label) the confusion matrix as text."""
    lines = [title] if title else []
    classes = metrics["classes"]
    width = max(len(c) for c in classes)
    if metrics["task"] == "multi_label":
        mAP = metrics["mAP"]
        lines.append(f"{scored(metrics)}  mAP {mAP:.4f}" if mAP is not None else f"{scored(metrics)}  mAP: n/a")
        lines.append(f"{'category':<{width}}  support      AP")
        for name, row in metrics["per_class"].items():
            ap = "     -" if row["ap"] is None else f"{row['ap']:.4f}"
            lines.append(f"{name:<{width}}  {row['support']:>7}  {ap:>6}")
        return "\n".join(lines)
    lines.append(f"{scored(metrics)}  top-1 {metrics['top1']:.4f}  top-3 {metrics['top3']:.4f}  "
                 f"macro F1 {metrics['macro_f1']:.4f}  balanced acc {metrics['balanced_accuracy']:.4f}")
    lines.append(f"{'class':<{width}}  support  precision  recall      F1  accuracy")
    for name, row in metrics["per_class"].items():
        recall = "     -" if row["recall"] is None else f"{row['recall']:.4f}"
        lines.append(f"{name:<{width}}  {row['support']:>7}  {row['precision']:>9.4f}  {recall:>6}  "
                     f"{row['f1']:.4f}  {row['accuracy']:>8.4f}")
    lines.append("confusion matrix (rows: true class, columns: predicted)")
    cm = np.asarray(metrics["confusion_matrix"])
    cell = max(4, len(str(cm.max())) + 1)
    lines.append(" " * width + "".join(f"{str(i):>{cell}}" for i in range(len(classes))))
    for i, name in enumerate(classes):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell}}" for v in cm[i]) + f"   {i}")
    return "\n".join(lines)


def confusion_figure(metrics: Dict, title: str = ""):
    """A matplotlib figure: colour = row-normalised share, text = counts."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    classes = metrics["classes"]
    size = 1.5 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or f"top-1 {metrics['top1']:.3f}")
    fig.tight_layout()
    return fig


def save_confusion_png(metrics: Dict, path: str, title: str = "") -> np.ndarray:
    """Write the PNG; returns the rendered image as CHW uint8 (for TensorBoard)."""
    import matplotlib.pyplot as plt

    fig = confusion_figure(metrics, title)
    fig.savefig(path, dpi=100)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return rgba[..., :3].transpose(2, 0, 1).copy()


def write_report(metrics: Dict, out_dir: str, name: str, writer=None, step: int = 0,
                 predictions: Optional[List[Dict]] = None, echo: bool = True,
                 tag: Optional[str] = None) -> Dict[str, str]:
    """``{name}.json`` (+ ``{name}_confusion.png``, ``{name}_predictions.jsonl``) under ``out_dir``;
    headline scalars and the confusion image to ``writer`` (a MetricsWriter) under ``tag/``
    (default: ``name``), e.g. name "val_step_00000100", tag "val"."""
    tag = tag or name
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, f"{name}.json")}
    atomic_write_json(paths["json"], dict(metrics, step=step))
    image = None
    if metrics["task"] == "single_label":
        paths["confusion_png"] = os.path.join(out_dir, f"{name}_confusion.png")
        image = save_confusion_png(metrics, paths["confusion_png"], f"{name}: top-1 {metrics['top1']:.3f}")
    if predictions is not None:
        paths["predictions"] = os.path.join(out_dir, f"{name}_predictions.jsonl")
        atomic_write_text(paths["predictions"], "".join(json.dumps(row) + "\n" for row in predictions))
    if writer is not None:
        writer.scalars({f"{tag}/{k}": v for k, v in headline(metrics).items()}, step)
        if image is not None:
            import torch
            writer.image(f"{tag}/confusion", torch.from_numpy(image), step)
    if echo:
        print(format_summary(metrics, f"== {tag} (step {step}) =="), flush=True)
    return paths
