"""Dataset readers, the splits of METHOD §5, and bad input (one line, exit code 2)."""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from PIL import Image

from uniemox.data.catalog import open_source
from uniemox.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image(path, color=(200, 100, 50)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)


def _flat(root, classes, n, sub=None):
    for c in classes:
        for i in range(n):
            _image(os.path.join(root, c, *( [sub(i)] if sub else []), f"img.{i}.jpg"))


def _counts(src):
    return Counter((r.split, r.label_name) for r in src.records)


def test_provided_splits_and_side_cars(tmp_path):
    for split in ("train", "val", "test"):
        _flat(str(tmp_path / split), ["sadness", "awe"], 2)
    side = tmp_path / "train" / "awe" / "img.0.json"
    side.write_text(json.dumps({"scene": "glacier", "object": ["ice"], "person_box": [1, 2, 5, 7]}))
    src = open_source(str(tmp_path), dataset="emo8")
    assert src.classes == ["awe", "sadness"]  # sorted, as torchvision's ImageFolder
    assert _counts(src) == {(s, c): 2 for s in ("train", "val", "test") for c in ("awe", "sadness")}
    keys = [r.key for r in src.records]
    assert len(set(keys)) == len(keys) and not any("." in k or "/" in k for k in keys)
    rec = next(r for r in src.records if r.path == str(side).replace(".json", ".jpg"))
    assert rec.attributes == {"scene": "glacier", "object": ["ice"]}
    assert rec.person_box == [1, 2, 5, 7] and rec.box_from_annotation


@pytest.mark.parametrize("dataset,fractions", [("fi", (0.80, 0.05, 0.15)), ("heco", (0.7, 0.1, 0.2)),
                                               ("emotion6", (0.7, 0.1, 0.2))])
def test_seeded_per_class_splits(tmp_path, dataset, fractions):
    _flat(str(tmp_path), ["anger", "joy"], 20)
    a, b = open_source(str(tmp_path), dataset=dataset), open_source(str(tmp_path), dataset=dataset)
    assert [(r.key, r.split) for r in a.records] == [(r.key, r.split) for r in b.records]  # reproducible
    for c in ("anger", "joy"):
        assert [_counts(a)[(s, c)] for s in ("train", "val", "test")] == [round(20 * f) for f in fractions]
    other = open_source(str(tmp_path), dataset=dataset, seed=1)
    assert [r.split for r in other.records] != [r.split for r in a.records]


def test_emotion6_seed_42_is_its_default(tmp_path):
    _flat(str(tmp_path), ["fear"], 20)
    default = [r.split for r in open_source(str(tmp_path), dataset="emotion6").records]
    assert default == [r.split for r in open_source(str(tmp_path), dataset="emotion6", seed=42).records]
    assert default != [r.split for r in open_source(str(tmp_path), dataset="emotion6", seed=0).records]


def test_ube_splits_per_class_and_subfolder(tmp_path):
    _flat(str(tmp_path), ["joy"], 20, sub=lambda i: "indoor" if i < 10 else "outdoor")
    src = open_source(str(tmp_path), dataset="ube")
    per_sub = Counter((r.split, "indoor" if "indoor" in r.path else "outdoor") for r in src.records)
    assert per_sub == {("train", "indoor"): 7, ("val", "indoor"): 1, ("test", "indoor"): 2,
                       ("train", "outdoor"): 7, ("val", "outdoor"): 1, ("test", "outdoor"): 2}


def test_caer_s_test_split_becomes_val_and_test(tmp_path):
    _flat(str(tmp_path / "train"), ["happy"], 5)
    _flat(str(tmp_path / "test"), ["happy"], 50)
    counts = _counts(open_source(str(tmp_path), dataset="caer-s"))
    assert counts == {("train", "happy"): 5, ("val", "happy"): 17, ("test", "happy"): 33}


def test_csv_source(tmp_path):
    _image(str(tmp_path / "a.jpg"))
    _image(str(tmp_path / "b.jpg"))
    (tmp_path / "l.csv").write_text("path,label,box\na.jpg,joy,1 2 6 7\nb.jpg,1,none\n")
    src = open_source(str(tmp_path / "l.csv"), classes=["fear", "joy"], split="test")
    a, b = src.records
    assert (a.label, a.label_name, a.person_box, a.box_from_annotation) == (1, "joy", [1, 2, 6, 7], True)
    assert (b.label, b.person_box, b.box_from_annotation, b.split) == (1, None, True, "test")


@pytest.mark.parametrize("rows,message", [
    ("a.jpg,joy\nb.jpg\n", "line 2: expected 'path,label\\[,box\\]'"),
    ("a.jpg,joy\n\nb.jpg,joy,1 2 x 4\n", "line 3: person box must be 4 numbers"),
    ("a.jpg,joy,5 5 1 1\n", "line 1: person box must be x0 y0 x1 y1"),
    ("a.jpg,anger\n", "line 1: unknown label 'anger'"),
])
def test_csv_errors_name_the_line(tmp_path, rows, message):
    (tmp_path / "l.csv").write_text(rows)
    with pytest.raises(UserError, match=message):
        open_source(str(tmp_path / "l.csv"), classes=["joy"], split="train")


def _emoset(root, emotion="amusement"):
    info = {"emotion": {"label2idx": {"amusement": 0, "awe": 1, "anger": 2}}}
    os.makedirs(root / "annotation" / "amusement")
    (root / "info.json").write_text(json.dumps(info))
    _image(str(root / "image" / "amusement" / "amusement_00000.jpg"))
    (root / "annotation" / "amusement" / "amusement_00000.json").write_text(json.dumps(
        {"emotion": "amusement", "brightness": 0.6, "colorfulness": 0.4, "scene": "circus",
         "object": ["clown"], "image_id": "amusement_00000"}))
    (root / "train.json").write_text(json.dumps([[emotion, "amusement_00000", "image/amusement/amusement_00000.jpg",
                                                  "annotation/amusement/amusement_00000.json"]]))


def test_emoset_layout(tmp_path):
    _emoset(tmp_path)
    src = open_source(str(tmp_path))
    assert src.source["format"] == "emoset" and src.classes == ["amusement", "awe", "anger"]
    (rec,) = src.records
    assert (rec.split, rec.label, rec.key) == ("train", 0, "amusement_00000")
    assert rec.attributes == {"brightness": 0.6, "colorfulness": 0.4, "scene": "circus", "object": ["clown"]}
    assert not rec.box_from_annotation  # EmoSet has no boxes: the detector finds them


def test_emotic_json(tmp_path):
    _image(str(tmp_path / "imgs" / "x.jpg"))
    ann = {"train": [{"image": "imgs/x.jpg", "people": [
        {"bbox": [0, 0, 4, 8], "categories": ["Peace", "Happiness"]},
        {"bbox": [4, 0, 8, 8], "categories": ["Fear"]}]}]}
    (tmp_path / "emotic.json").write_text(json.dumps(ann))
    src = open_source(str(tmp_path / "emotic.json"))
    assert len(src.classes) == 26 and [r.person_box for r in src.records] == [[0, 0, 4, 8], [4, 0, 8, 8]]
    first = src.records[0]
    assert first.label_names == ["Peace", "Happiness"] and first.label == src.classes.index("Peace")
    ann["train"][0]["people"][1]["categories"] = ["Boredom"]
    (tmp_path / "emotic.json").write_text(json.dumps(ann))
    with pytest.raises(UserError, match="person 1: unknown label 'Boredom'"):
        open_source(str(tmp_path / "emotic.json"))


def _cli(*args):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "make_shards.py"), *args],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_emoset = tmp_path / "emoset"
    bad_emoset.mkdir()
    _emoset(bad_emoset, emotion="joy")
    (tmp_path / "l.csv").write_text("a.jpg,joy\nb.jpg,joy,1 2 3\n")
    cases = [((str(tmp_path / "missing"), str(tmp_path / "o1")), "not found"),
             ((str(empty), str(tmp_path / "o2")), "no images found"),
             ((str(bad_emoset), str(tmp_path / "o3")), "train.json entry 0: unknown label 'joy'"),
             ((str(tmp_path / "l.csv"), str(tmp_path / "o4")), "l.csv line 2: person box must be 4 numbers")]
    for args, message in cases:
        code, lines = _cli(*args, "--detector", "none")
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
