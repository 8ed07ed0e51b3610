"""Evaluation: metrics, reports, prediction and zero-shot scoring. Knows models and data,
not the trainer; the entry points (launch/finetune.py, launch/predict.py) use it."""
from .metrics import (average_precision, classification_metrics, confusion_matrix, headline, multilabel_metrics,
                      primary, topk_accuracy)
from .report import format_summary, save_confusion_png, write_report

__all__ = ["average_precision", "classification_metrics", "confusion_matrix", "headline", "multilabel_metrics",
           "primary", "topk_accuracy", "format_summary", "save_confusion_png", "write_report"]
