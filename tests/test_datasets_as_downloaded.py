"""make_shards on each dataset exactly as its download unpacks (small copies of real photographs,
tests/dataset_layouts.py): classes, labels, split counts, attributes, person boxes, manifest."""
import os
import subprocess
import sys

import pytest

from dataset_layouts import (EMOSET_INFO_ORDER, Photos, class_folders, emoset, emotic_images, emotic_mat, emotion6,
                             samples, shard, split_counts, tandon_csvs)
from uniemox.data.classes import EMOTIC_CATEGORIES
from uniemox.data.prompts import MIKELS_EMOTIONS, build_prompt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIKELS = list(MIKELS_EMOTIONS)


@pytest.fixture(scope="module")
def photos():
    return Photos()


def _per_class(counts, classes):
    return {c: counts.get(c, 0) for c in classes}


@pytest.mark.parametrize("form", ["download", "github"])
def test_emoset(photos, tmp_path, form):
    emoset(photos, tmp_path / "EmoSet-118K", form)
    m = shard(tmp_path / "EmoSet-118K", tmp_path / "out")
    assert m["source"]["format"] == "emoset" and m["classes"] == MIKELS and "Mikels" in m["label_order"]
    assert m["source"]["info_label2idx"] == {n: i for i, n in enumerate(EMOSET_INFO_ORDER)}  # info.json's order, kept
    assert split_counts(m) == {"train": {c: 1 for c in MIKELS},
                               "val": _per_class({"amusement": 1, "awe": 1}, MIKELS),
                               "test": _per_class({"sadness": 1}, MIKELS)}
    got = samples(tmp_path / "out")
    assert sorted(got) == sorted([f"{e}_00000" for e in MIKELS] + ["amusement_00001", "awe_00001", "sadness_00001"])
    split, amusement = got["amusement_00000"]
    assert split == "train" and amusement["label"] == 0
    assert amusement["attributes"] == {"brightness": 0.6, "colorfulness": 0.3, "scene": "amusement_park",
                                       "object": ["Balloon", "Person"], "facial_expression": "happy",
                                       "human_action": "laughing"}
    assert "brightness of 0.6 and color saturation of 0.3." in build_prompt("amusement", amusement["attributes"])
    awe = got["awe_00000"][1]
    assert awe["label"] == MIKELS.index("awe") == 2 and EMOSET_INFO_ORDER.index("awe") == 1  # remapped
    assert awe["attributes"] == {"brightness": 0.8, "scene": "mountain_snowy"}  # "0.8" read as the number
    assert got["sadness_00001"] == ("test", got["sadness_00001"][1]) and got["sadness_00001"][1]["label"] == 7
    assert all(meta["person_box"] is None and meta["box_source"] == "none" for _, meta in got.values())


@pytest.fixture(scope="module")
def emotic_root(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("EMOTIC")
    sizes = emotic_images(photos, str(root))
    emotic_mat(str(root / "Annotations" / "Annotations.mat"))
    tandon_csvs(str(root / "emotic_pre"), sizes)
    return root, sizes


def _check_emotic(m, got, sizes):
    assert m["classes"] == list(EMOTIC_CATEGORIES) and m["multi_label"] and "EMOTIC" in m["label_order"]
    assert {s: info["count"] for s, info in m["splits"].items()} == {"train": 2, "val": 1, "test": 1}
    assert m["with_person_box"] == 4 and m["box_sources"] == {"annotation": 4}
    by_labels = {tuple(meta["label_names"]): (split, meta) for split, meta in got.values()}
    split, peace = by_labels[("Peace", "Happiness")]
    w, h = sizes["mscoco/images/COCO_train2014_000000000001.jpg"]
    assert split == "train" and peace["labels"] == [EMOTIC_CATEGORIES.index("Peace"), EMOTIC_CATEGORIES.index("Happiness")]
    assert peace["person_box"] == [2.0, 3.0, 30.0, min(40.0, h)] and peace["size"] == [w, h]
    assert {k: peace["annotations"][k] for k in ("valence", "arousal", "dominance", "gender", "age")} == \
        {"valence": 6.0, "arousal": 5.0, "dominance": 7.0, "gender": "Female", "age": "Adult"}
    split, val = by_labels[("Anticipation", "Excitement")]  # the combined labels and values, not an annotator's
    assert split == "val" and (val["annotations"]["valence"], val["annotations"]["arousal"]) == (7.5, 6.5)
    assert by_labels[("Fatigue",)][0] == "test" and by_labels[("Engagement",)][0] == "train"


def test_emotic_annotations_mat(emotic_root, tmp_path):
    root, sizes = emotic_root
    m = shard(root, tmp_path / "out", "--max-side", "0")  # the unpacked folder: Annotations/ + emotic/
    assert m["source"]["format"] == "emotic-mat" and m["source"]["image_root"] == str(root / "emotic")
    assert m["skipped"]["person_without_categories"] == 1  # skipped and counted, not fatal
    _check_emotic(m, samples(tmp_path / "out"), sizes)
    m = shard(root / "Annotations" / "Annotations.mat", tmp_path / "out2", "--max-side", "0")  # the file itself
    assert {s: info["count"] for s, info in m["splits"].items()} == {"train": 2, "val": 1, "test": 1}


def test_emotic_tandon_csvs(emotic_root, tmp_path):
    root, sizes = emotic_root
    m = shard(root / "emotic_pre", tmp_path / "out", "--max-side", "0")
    assert m["source"]["format"] == "emotic-csv" and m["source"]["image_root"] == str(root / "emotic")
    _check_emotic(m, samples(tmp_path / "out"), sizes)
    m = shard(root / "emotic_pre" / "val.csv", tmp_path / "one", "--max-side", "0")  # one file: split from its name
    assert list(m["splits"]) == ["val"] and m["splits"]["val"]["count"] == 1


def test_emotion6(photos, tmp_path):
    counts = {"anger": 9, "disgust": 3, "fear": 3, "joy": 3, "sadness": 3, "surprise": 3}
    emotion6(photos, str(tmp_path / "Emotion6"), counts)
    m = shard(tmp_path / "Emotion6", tmp_path / "out", "--dataset", "emotion6")
    assert m["classes"] == list(counts) and m["source"]["class_root"].endswith("Emotion6/images")
    # per class, the release's sklearn counting: 9 -> 6/1/2 (int() would give 6/0/3), 3 -> 2/0/1
    assert split_counts(m) == {"train": dict(counts, anger=6, **{c: 2 for c in list(counts)[1:]}),
                               "val": dict({c: 0 for c in counts}, anger=1),
                               "test": dict({c: 1 for c in counts}, anger=2)}
    assert m["source"]["ground_truth"]["rows"] == 24 and m["source"]["ground_truth"]["matched"] == 24
    meta = samples(tmp_path / "out")["anger_3"][1]
    assert meta["label"] == 0 and meta["annotations"]["valence"] == 4.5 and meta["annotations"]["arousal"] == 3.8
    assert meta["annotations"]["emotion_distribution"] == {"anger": 0.133333, "disgust": 0.7, "fear": 0.0,
                                                           "joy": 0.0666667, "sadness": 0.1, "surprise": 0.0,
                                                           "neutral": 0.0}
    plain = shard(tmp_path / "Emotion6", tmp_path / "plain", "--split", "train")  # no preset: still 6 classes
    assert plain["classes"] == list(counts)


def test_unbiasedemo(photos, tmp_path):
    images = tmp_path / "UnBiasedEmo" / "images"
    class_folders(photos, str(images / "joy"), {"dog": 9, "baby": 1})
    for cls in ("anger", "fear", "love", "sadness", "surprise"):
        class_folders(photos, str(images / cls), {"crowd": 1, "street": 1})
    m = shard(tmp_path / "UnBiasedEmo", tmp_path / "out", "--dataset", "UnBiasedEmo")
    assert m["dataset"] == "ube" and m["classes"] == ["anger", "fear", "joy", "love", "sadness", "surprise"]
    got = samples(tmp_path / "out")
    dog = sorted(split for key, (split, _) in got.items() if key.startswith("joy_dog"))
    assert dog == ["test"] * 3 + ["train"] * 6  # per (class, subfolder): int(9*0.7)=6, int(0.9)=0, rest 3
    assert all(split == "test" for key, (split, _) in got.items() if not key.startswith("joy_dog"))


CAER = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]


def test_caer_s_official_and_release_split(photos, tmp_path):
    official = tmp_path / "CAER-S"
    class_folders(photos, str(official / "train"), {c: 1 for c in CAER}, ext=".png")
    class_folders(photos, str(official / "test"), {c: 4 for c in CAER}, ext=".png")
    m = shard(official, tmp_path / "out", "--dataset", "caer-s")
    assert m["classes"] == CAER  # the preset's order, the download's spelling ("Angry" = anger)
    assert split_counts(m) == {"train": {c: 1 for c in CAER}, "val": {c: 2 for c in CAER},
                               "test": {c: 2 for c in CAER}}  # test keeps int(4*0.66)=2, as the release
    release = tmp_path / "caerss"
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        class_folders(photos, str(release / split), {c.replace("Angry", "Anger"): n for c in CAER}, ext=".png")
    m = shard(release, tmp_path / "out2", "--dataset", "caer-s")
    assert m["classes"][0] == "Anger"
    assert split_counts(m) == {s: {c: n for c in m["classes"]} for s, n in (("train", 2), ("val", 1), ("test", 1))}


def test_fi_emo8_heco_and_one_mikels_order(photos, tmp_path):
    class_folders(photos, str(tmp_path / "FI"), dict({c: 1 for c in MIKELS}, amusement=7))
    fi = shard(tmp_path / "FI", tmp_path / "fi", "--dataset", "fi")
    assert split_counts(fi)["train"]["amusement"] == 5 and split_counts(fi)["test"]["amusement"] == 2  # int()
    for split in ("train", "val", "test"):
        class_folders(photos, str(tmp_path / "Emo8" / split), {c: 1 for c in MIKELS})
    emo8 = shard(tmp_path / "Emo8", tmp_path / "emo8", "--dataset", "emo8")
    assert fi["classes"] == emo8["classes"] == MIKELS and fi["label_order"] == emo8["label_order"]
    for out in ("fi", "emo8"):
        labels = {meta["label_name"]: meta["label"] for _, meta in samples(tmp_path / out).values()}
        assert labels == {c: i for i, c in enumerate(MIKELS)}
    heco_classes = ["Surprise", "Sadness", "Peace", "Happiness", "Fear", "Excitement", "Disgust", "Anger"]
    class_folders(photos, str(tmp_path / "HECO"), dict({c: 1 for c in heco_classes}, Anger=9))
    heco = shard(tmp_path / "HECO", tmp_path / "heco", "--dataset", "heco")
    assert heco["classes"] == sorted(heco_classes) and split_counts(heco)["test"]["Anger"] == 3


def _cli(*args):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "make_shards.py"), *args,
                           "--detector", "none"], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_wrong_classes_are_refused_with_one_line(photos, tmp_path):
    emotion6(photos, str(tmp_path / "Emotion6"), {c: 1 for c in ("anger", "disgust", "fear", "joy", "sadness",
                                                                    "surprise")})
    code, lines = _cli(str(tmp_path / "Emotion6"), str(tmp_path / "out"), "--dataset", "fi")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "not the 8 fi classes" in lines[0]
    assert "missing amusement" in lines[0] and not (tmp_path / "out").exists()
