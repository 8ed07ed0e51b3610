"""Dataset readers, the splits of docs/method.md#fine-tuning, and bad input (one line, exit code 2)."""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from PIL import Image

from uniemox.data.catalog import FORMATS, open_source
from uniemox.data.classes import known_classes
from uniemox.data.splits import cut_counts
from uniemox.errors import UserError
from uniemox.launch.make_shards import parse_args

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
    src = open_source(str(tmp_path))
    assert src.classes == ["awe", "sadness"]  # sorted, as torchvision's ImageFolder
    assert _counts(src) == {(s, c): 2 for s in ("train", "val", "test") for c in ("awe", "sadness")}
    keys = [r.key for r in src.records]
    assert len(set(keys)) == len(keys) and not any("." in k or "/" in k for k in keys)
    rec = next(r for r in src.records if r.path == str(side).replace(".json", ".jpg"))
    assert rec.attributes == {"scene": "glacier", "object": ["ice"]}
    assert rec.person_box == [1, 2, 5, 7] and rec.box_from_annotation


# n = 9 per class tells the release's int() counting from round() and Emotion6's sklearn counting
@pytest.mark.parametrize("dataset,counts", [("fi", (7, 0, 2)), ("heco", (6, 0, 3)), ("emotion6", (6, 1, 2)),
                                            ("custom", (7, 0, 2))])
def test_drawn_splits_count_as_the_release_did(tmp_path, dataset, counts):
    classes = known_classes(dataset) or ("anger", "joy")
    _flat(str(tmp_path), classes, 9)
    a, b = open_source(str(tmp_path), dataset=dataset), open_source(str(tmp_path), dataset=dataset)
    assert [(r.key, r.split) for r in a.records] == [(r.key, r.split) for r in b.records]  # reproducible
    for c in classes:
        assert tuple(_counts(a)[(s, c)] for s in ("train", "val", "test")) == counts
    other = open_source(str(tmp_path), dataset=dataset, seed=1)
    assert [r.split for r in other.records] != [r.split for r in a.records]


def test_emotion6_counting_is_sklearns_train_test_split():
    """The release cut Emotion6 with train_test_split(train_size=0.7), then 0.1/(0.1+0.2) of the rest."""
    sklearn = pytest.importorskip("sklearn.model_selection")
    for n in range(10, 700):  # below 10 sklearn refuses to make an empty part
        train, rest = sklearn.train_test_split(list(range(n)), train_size=0.7, random_state=42)
        val, test = sklearn.train_test_split(rest, train_size=0.1 / (0.1 + 0.2), random_state=42)
        assert cut_counts(n, (0.7, 0.1, 0.2), "sklearn") == [len(train), len(val), len(test)], n
    assert cut_counts(330, (0.7, 0.1, 0.2), "sklearn") == [230, 33, 67]  # one Emotion6 class
    assert cut_counts(330, (0.7, 0.1, 0.2)) == [230, 33, 67] and cut_counts(9, (0.7, 0.1, 0.2)) == [6, 0, 3]


def test_emotion6_seed_42_is_its_default(tmp_path):
    _flat(str(tmp_path), known_classes("emotion6"), 20)
    default = [r.split for r in open_source(str(tmp_path), dataset="emotion6").records]
    assert default == [r.split for r in open_source(str(tmp_path), dataset="emotion6", seed=42).records]
    assert default != [r.split for r in open_source(str(tmp_path), dataset="emotion6", seed=0).records]


def test_ube_splits_per_class_and_subfolder(tmp_path):
    _flat(str(tmp_path), ["joy"], 18, sub=lambda i: "indoor" if i < 9 else "outdoor")
    _flat(str(tmp_path), [c for c in known_classes("ube") if c != "joy"], 1, sub=lambda i: "all")
    src = open_source(str(tmp_path), dataset="ube")
    per_sub = Counter((r.split, "indoor" if "indoor" in r.path else "outdoor") for r in src.records
                      if r.label_name == "joy")
    assert per_sub == {("train", "indoor"): 6, ("test", "indoor"): 3, ("train", "outdoor"): 6, ("test", "outdoor"): 3}


def test_caer_s_official_test_split_becomes_test_and_val(tmp_path):
    classes = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]  # one copy's spelling
    _flat(str(tmp_path / "train"), classes, 2)
    _flat(str(tmp_path / "test"), classes, 4)
    src = open_source(str(tmp_path), dataset="caer-s")
    assert src.classes == classes  # the preset's order, the dataset's spelling
    # the release: test keeps int(4 * 0.66) = 2, the rest is val (round() would keep 3)
    assert _counts(src) == {(s, c): n for c in classes for s, n in (("train", 2), ("test", 2), ("val", 2))}


def test_caer_s_release_split_download_keeps_its_splits(tmp_path):
    classes = ["Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        _flat(str(tmp_path / split), classes, n)
    counts = _counts(open_source(str(tmp_path), dataset="caer-s"))
    assert counts == {(s, c): n for c in classes for s, n in (("train", 3), ("val", 1), ("test", 2))}


@pytest.mark.parametrize("dataset,found", [("emotion6", ["images"]), ("emo8", ["awe", "sadness"]),
                                           ("emotion6", ["anger", "fear", "joy", "love", "sadness", "surprise"]),
                                           ("caer-s", ["Angry", "Anger", "Disgust"])])
def test_a_preset_refuses_classes_that_do_not_match(tmp_path, dataset, found):
    _flat(str(tmp_path / "x"), found, 1)
    with pytest.raises(UserError, match=f"not the .* {dataset} classes|same {dataset} class"):
        open_source(str(tmp_path / "x"), dataset=dataset)


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


EMOSET_ORDER = ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"]


def _emoset(root, emotion="amusement"):
    info = {"emotion": {"label2idx": {name: i for i, name in enumerate(EMOSET_ORDER)}}}
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
    assert src.source["format"] == "emoset" and src.classes == sorted(EMOSET_ORDER)  # one Mikels order
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
    ann["train"][0]["people"].append({"bbox": [1, 1, 5, 5], "categories": []})
    (tmp_path / "emotic.json").write_text(json.dumps(ann))
    src = open_source(str(tmp_path / "emotic.json"))
    assert len(src.records) == 2 and src.skipped == {"person_without_categories": 1}  # skipped, counted
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
    (tmp_path / "Annotations.mat").write_bytes(b"MATLAB 5.0 MAT-file, but then nothing")
    cases = [((str(tmp_path / "missing"), str(tmp_path / "o1")), "not found"),
             ((str(empty), str(tmp_path / "o2")), "no images found"),
             ((str(bad_emoset), str(tmp_path / "o3")), "train.json entry 0: unknown label 'joy'"),
             ((str(tmp_path / "l.csv"), str(tmp_path / "o4")), "l.csv line 2: person box must be 4 numbers"),
             ((str(tmp_path / "Annotations.mat"), str(tmp_path / "o5")), "as a MATLAB .mat file")]
    for args, message in cases:
        code, lines = _cli(*args, "--detector", "none")
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_cannot_tell_the_format_names_one_that_works(tmp_path, capsys):
    _image(str(tmp_path / "a.jpg"))
    (tmp_path / "list.txt").write_text("a.jpg,joy\n")
    with pytest.raises(UserError, match=r"--format csv for path,label\[,box\] rows"):
        open_source(str(tmp_path / "list.txt"))
    assert [r.label_name for r in open_source(str(tmp_path / "list.txt"), fmt="csv", split="train").records] == ["joy"]
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(UserError) as err:
        open_source(str(tmp_path / "blob.bin"))
    assert [n for n in FORMATS[1:] if f"{n}: " not in str(err.value)] == [] and "\n" not in str(err.value)
    _emoset(tmp_path / "es")
    with pytest.raises(UserError, match="one of EmoSet's files: point at its folder"):
        open_source(str(tmp_path / "es" / "train.json"))
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert [n for n in FORMATS if n not in help_text] == []
