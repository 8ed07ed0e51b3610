"""The synthetic sample dataset: deterministic, learnable, with attributes and exact person boxes."""
import hashlib
import os

import numpy as np

from uniemox.data import ensure_sample_shards, load_manifest, verify_shards, write_sample_dataset
from uniemox.data.prompts import MIKELS_EMOTIONS
from uniemox.data.sample import make_image


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            h.update(f.encode())
            h.update(open(os.path.join(dirpath, f), "rb").read())
    return h.hexdigest()


def test_deterministic_emo8_layout(tmp_path):
    a, b = write_sample_dataset(str(tmp_path / "a"), 2), write_sample_dataset(str(tmp_path / "b"), 2)
    assert _digest(a) == _digest(b)
    assert sorted(os.listdir(a)) == ["README.txt", "test", "train", "val"]
    assert sorted(os.listdir(os.path.join(a, "train"))) == sorted(MIKELS_EMOTIONS)
    assert "SYNTHETIC" in open(os.path.join(a, "README.txt")).read()
    other = write_sample_dataset(str(tmp_path / "c"), 2, seed=1)
    assert _digest(other) != _digest(a)


def test_attributes_and_person_boxes():
    with_person = 0
    for label in range(8):
        for i in range(10):
            img, meta = make_image(label, "train", i)
            assert meta["scene"] and meta["object"] and 0 <= meta["brightness"] <= 1
            box = meta["person_box"]
            if box is None:
                assert "facial_expression" not in meta and "person" not in meta["object"]
                continue
            with_person += 1
            assert meta["facial_expression"] and meta["human_action"] and "person" in meta["object"]
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height
            assert (x1 - x0) * (y1 - y0) < 0.8 * img.width * img.height
    assert 0.2 < with_person / 80 < 0.6


def test_classes_are_learnable_from_colour_statistics():
    """A nearest-centroid classifier on mean colour + colour spread separates the classes:
    the structure a small ViT learns in minutes."""
    def features(split, n):
        x, y = [], []
        for label in range(8):
            for i in range(n):
                arr = np.asarray(make_image(label, split, i)[0], dtype=np.float32) / 255
                x.append(np.concatenate([arr.mean((0, 1)), arr.std((0, 1))]))
                y.append(label)
        return np.array(x), np.array(y)

    xtr, ytr = features("train", 12)
    xte, yte = features("test", 6)
    centroids = np.stack([xtr[ytr == c].mean(0) for c in range(8)])
    pred = np.argmin(((xte[:, None] - centroids[None]) ** 2).sum(-1), 1)
    assert (pred == yte).mean() > 0.8


def test_sample_shards_are_built_once(tmp_path):
    root = ensure_sample_shards(str(tmp_path), images_per_class_per_split=3, shard_size=8)
    manifest = load_manifest(root)
    assert manifest["classes"] == list(MIKELS_EMOTIONS) and "synthetic" in manifest["dataset"]
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 24, "val": 24, "test": 24}
    assert manifest["box_sources"] == {"annotation": 72} and verify_shards(root) == []
    mtime = os.path.getmtime(os.path.join(root, "manifest.json"))
    assert ensure_sample_shards(str(tmp_path), images_per_class_per_split=3, shard_size=8) == root
    assert os.path.getmtime(os.path.join(root, "manifest.json")) == mtime  # cached, not rebuilt
    assert os.listdir(tmp_path) == [os.path.basename(root)]  # no temporary folder left behind
