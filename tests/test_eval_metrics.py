"""Metrics on a hand-checked prediction set, AP against sklearn, and the report files."""
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix as sk_confusion, f1_score

from uniemox.eval.metrics import average_precision, classification_metrics, headline, multilabel_metrics, primary
from uniemox.eval.report import format_summary, write_report
from uniemox.train.metrics import MetricsWriter

CLASSES = ["a", "b", "c", "d"]  # d never occurs: it must not enter macro F1 or balanced accuracy
LABELS = [0, 0, 1, 1, 2, 2]
SCORES = [[0.7, 0.1, 0.1, 0.1],   # a -> a
          [0.3, 0.5, 0.1, 0.1],   # a -> b
          [0.1, 0.8, 0.05, 0.05],  # b -> b
          [0.2, 0.6, 0.1, 0.1],   # b -> b
          [0.1, 0.1, 0.7, 0.1],   # c -> c
          [0.4, 0.2, 0.1, 0.3]]   # c -> a, and c is ranked last: a top-3 miss


def test_hand_checked_single_label_metrics():
    m = classification_metrics(np.array(SCORES), np.array(LABELS), CLASSES)
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top3"] == pytest.approx(5 / 6)
    a, b, c, d = (m["per_class"][k] for k in CLASSES)
    # a: TP 1 of 2 true, 2 predicted; b: 2 of 2, 3 predicted; c: 1 of 2, 1 predicted
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert a["accuracy"] == pytest.approx(4 / 6)   # TP 1 + TN 3 of 6
    assert d == {"support": 0, "predicted": 0, "accuracy": 1.0, "precision": 0.0, "recall": None, "f1": 0.0}
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    preds = np.argmax(SCORES, axis=1)
    assert m["macro_f1"] == pytest.approx(f1_score(LABELS, preds, average="macro"))
    assert m["confusion_matrix"] == sk_confusion(LABELS, preds, labels=range(4)).tolist()
    assert primary(m) == m["top1"]
    assert headline(m)["recall/b"] == 1.0 and "recall/d" not in headline(m)


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(5, 60))
        targets = (rng.random(n) < 0.3).astype(int)
        if not targets.any():
            targets[0] = 1
        scores = np.round(rng.random(n), 1 if trial % 2 else 4)  # coarse rounding makes ties
        assert average_precision(scores, targets) == pytest.approx(average_precision_score(targets, scores))
    assert average_precision(np.array([0.2, 0.9]), np.array([0, 0])) is None


def test_multilabel_map_and_per_category_ap():
    rng = np.random.default_rng(1)
    targets = (rng.random((40, 5)) < 0.35).astype(int)
    targets[:, 4] = 0  # a category without positives: no AP, not in the mean
    scores = rng.random((40, 5)) + targets * 0.3
    m = multilabel_metrics(scores, targets, list("vwxyz"))
    expected = [average_precision_score(targets[:, i], scores[:, i]) for i in range(4)]
    assert [m["per_class"][k]["ap"] for k in "vwxy"] == pytest.approx(expected)
    assert m["per_class"]["z"] == {"support": 0, "ap": None}
    assert m["mAP"] == pytest.approx(np.mean(expected))
    assert m["mAP"] == pytest.approx(average_precision_score(targets[:, :4], scores[:, :4], average="macro"))
    assert "mAP" in format_summary(m)


def test_report_writes_json_png_predictions_and_tensorboard(tmp_path):
    m = classification_metrics(np.array(SCORES), np.array(LABELS), CLASSES)
    writer = MetricsWriter(str(tmp_path))
    rows = [{"key": f"k{i}"} for i in range(6)]
    paths = write_report(m, str(tmp_path / "eval"), "test", writer, step=7, predictions=rows, echo=False)
    writer.close()
    saved = json.loads(open(paths["json"]).read())
    assert saved["confusion_matrix"] == m["confusion_matrix"] and saved["step"] == 7
    assert open(paths["confusion_png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(open(paths["predictions"]).readlines()) == 6
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert logged[0]["test/top1"] == pytest.approx(4 / 6) and logged[0]["step"] == 7
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    text = format_summary(m)
    assert "confusion matrix" in text and "   1   1   0   0   0" in text  # row a, then its index


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((2, 3)), np.zeros(2, int), ["x", "y"])
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((0, 2)), np.zeros(0, int), ["x", "y"])
