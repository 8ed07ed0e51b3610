"""Small copies of the datasets' downloads, as their archives unpack, built from real photographs
(skimage.data, matplotlib's grace_hopper.jpg), and a way to shard them and read the result back.

Each builder follows the layout the dataset's own sources document (docs/data.md names them).
"""
import csv
import io
import json
import os
import tarfile

import numpy as np
import scipy.io
import skimage.data
from matplotlib import cbook
from PIL import Image

from uniemox.data import load_manifest
from uniemox.launch.make_shards import main as make_shards

EMOSET_INFO_ORDER = ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"]


def photographs(side=64):
    """Six real photographs, shrunk so the longer side is `side` (tests stay fast)."""
    arrays = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket(),
              skimage.data.immunohistochemistry()]
    images = [Image.fromarray(a) for a in arrays]
    images.append(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    for img in images:
        img.thumbnail((side, side))
    return images


class Photos:
    def __init__(self):
        self.images = photographs()
        self.count = 0

    def put(self, path):
        """Write the next photograph to `path` (JPEG or PNG by its extension); returns its size."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img = self.images[self.count % len(self.images)]
        self.count += 1
        img.save(path, quality=90) if path.lower().endswith((".jpg", ".jpeg")) else img.save(path)
        return img.size


def shard(source, out, *extra):
    """Run make_shards' real main on `source`; the manifest it wrote."""
    args = [str(source), str(out), "--detector", "none", "--workers", "0", "--no-progress", *extra]
    assert make_shards(args) == 0
    return load_manifest(str(out))


def samples(out):
    """{key: (split, sample JSON)} of every shard of a set."""
    manifest, found = load_manifest(str(out)), {}
    for split, info in manifest["splits"].items():
        for entry in info["shards"]:
            with tarfile.open(os.path.join(out, entry["file"])) as tar:
                for member in tar.getmembers():
                    key, ext = member.name.split(".", 1)
                    if ext == "json":
                        found[key] = (split, json.loads(tar.extractfile(member).read()))
                    else:
                        assert Image.open(io.BytesIO(tar.extractfile(member).read())).format == "JPEG"
    return found


def split_counts(manifest):
    return {split: info["per_class"] for split, info in manifest["splits"].items()}


def class_folders(photos, root, counts, ext=".jpg"):
    """ROOT/CLASS/N.ext with counts[CLASS] photographs."""
    for cls, n in counts.items():
        for i in range(n):
            photos.put(os.path.join(root, cls, f"{i + 1}{ext}"))


# --- EmoSet-118K -------------------------------------------------------------------------------

def emoset(photos, root, form):
    """form "download": flat info.json, [emotion, image, annotation] rows (the release reads these);
    "github": the repository's nested info.json, [emotion, image_id, image, annotation] rows, one
    row with image and annotation the other way round."""
    label2idx = {name: i for i, name in enumerate(EMOSET_INFO_ORDER)}
    table = {"label2idx": label2idx, "idx2label": {str(i): n for n, i in label2idx.items()}}
    info = table if form == "download" else {"emotion": table, "brightness": {"label2idx": {"0.6": 6}}}
    rows = {"train": [(e, 0) for e in EMOSET_INFO_ORDER], "val": [("amusement", 1), ("awe", 1)],
            "test": [("sadness", 1)]}
    annotations = {("amusement", 0): {"emotion": "amusement", "brightness": 0.6, "colorfulness": 0.3,
                                      "scene": "amusement_park", "object": ["Balloon", "Person"],
                                      "facial_expression": "happy", "human_action": "laughing"},
                   ("awe", 0): {"emotion": "awe", "brightness": "0.8", "scene": "mountain_snowy"}}
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "info.json"), "w") as f:
        json.dump(info, f)
    for split, items in rows.items():
        listed = []
        for emotion, n in items:
            image, note = f"image/{emotion}/{emotion}_{n:05d}.jpg", f"annotation/{emotion}/{emotion}_{n:05d}.json"
            photos.put(os.path.join(root, image))
            os.makedirs(os.path.join(root, os.path.dirname(note)), exist_ok=True)
            with open(os.path.join(root, note), "w") as f:
                json.dump(annotations.get((emotion, n), {"emotion": emotion}), f)
            image_id = f"{emotion}_{n:05d}"
            if form == "download":
                listed.append([emotion, image, note])
            else:
                listed.append([emotion, image_id, note, image] if emotion == "sadness" else [emotion, image_id, image, note])
        with open(os.path.join(root, f"{split}.json"), "w") as f:
            json.dump(listed, f)


# --- EMOTIC ------------------------------------------------------------------------------------

def _struct(shape, rows):
    """A MATLAB struct array (what savemat writes as one) of `rows`, dicts with the same fields."""
    array = np.empty(shape, dtype=[(k, "O") for k in rows[0]])
    for index, row in zip(np.ndindex(shape), rows):
        for k, v in row.items():
            array[index][k] = v
    return array


def _cell(names):
    cell = np.empty((1, len(names)), dtype=object)
    for i, name in enumerate(names):
        cell[0, i] = name
    return cell


def _vad(v, a, d):
    return _struct((1, 1), [{"valence": np.array([[v]]), "arousal": np.array([[a]]), "dominance": np.array([[d]])}])


# (split, folder, file, [persons: (box, categories, vad)]); val/test persons have 2 annotators
EMOTIC_PEOPLE = [
    ("train", "mscoco/images", "COCO_train2014_000000000001.jpg",
     [([2, 3, 30, 40], ["Peace", "Happiness"], (6.0, 5.0, 7.0)), ([20, 5, 60, 44], ["Engagement"], (5.0, 6.0, 5.0))]),
    ("train", "framesdb/images", "frame_x7.jpg", [([1, 1, 40, 30], [], (5.0, 5.0, 5.0))]),  # no categories
    ("val", "emodb_small/images", "0a1b2c.jpg", [([4, 4, 44, 40], ["Anticipation", "Excitement"], (7.5, 6.5, 6.0))]),
    ("test", "ade20k/images", "ADE_train_00000001.jpg", [([0, 0, 25, 30], ["Fatigue"], (4.0, 2.0, 5.0))]),
]


def emotic_images(photos, root):
    """ROOT/emotic/FOLDER/FILE for every EMOTIC_PEOPLE image; {relative path: size}."""
    return {f"{folder}/{name}": photos.put(os.path.join(root, "emotic", folder, name))
            for _, folder, name, _ in EMOTIC_PEOPLE}


def emotic_mat(path):
    """Annotations.mat in the official struct layout, written with scipy.io.savemat."""
    splits = {"train": [], "val": [], "test": []}
    for split, folder, name, people in EMOTIC_PEOPLE:
        persons = []
        for box, cats, vad in people:
            person = {"body_bbox": np.array([box], float)}
            if split == "train":
                person.update(annotations_categories=_struct((1, 1), [{"categories": _cell(cats)}]),
                              annotations_continuous=_vad(*vad))
            else:  # two annotators, each naming one category; the combined fields are the labels
                person.update(annotations_categories=_struct((1, 2), [{"categories": _cell(cats[:1])},
                                                                      {"categories": _cell(["Pain"])}]),
                              combined_categories=_cell(cats),
                              annotations_continuous=_struct((1, 2), [{"valence": np.array([[1.0]]),
                                                                       "arousal": np.array([[1.0]]),
                                                                       "dominance": np.array([[1.0]])}] * 2),
                              combined_continuous=_vad(*vad))
            person.update(gender="Female", age="Adult")
            persons.append(person)
        splits[split].append({"filename": name, "folder": folder,
                              "image_size": _struct((1, 1), [{"n_col": np.array([[96.0]]), "n_row": np.array([[64.0]])}]),
                              "original_database": _struct((1, 1), [{"name": folder.split("/")[0]}]),
                              "person": _struct((1, len(persons)), persons)})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, {s: _struct((1, len(rows)), rows) for s, rows in splits.items()})


def tandon_csvs(folder, sizes):
    """emotic_pre/{train,val,test}.csv as Tandon-A/emotic's mat2py.py writes them (csv.writer of
    Python lists; persons without categories already dropped, as it drops them)."""
    os.makedirs(folder, exist_ok=True)
    for split in ("train", "val", "test"):
        with open(os.path.join(folder, f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f, delimiter=",", dialect="excel")
            writer.writerow(["Index", "Folder", "Filename", "Image Size", "BBox", "Categorical_Labels",
                             "Continuous_Labels", "Gender", "Age"])
            index = 0
            for s, image_folder, name, people in EMOTIC_PEOPLE:
                for box, cats, vad in people:
                    if s == split and cats:
                        writer.writerow([index, image_folder, name, list(sizes[f"{image_folder}/{name}"]), box, cats,
                                         list(vad), "Female", "Adult"])
                        index += 1


# --- Emotion6 ----------------------------------------------------------------------------------

EMOTION6_ROW = "{name}\t{v}\t{a}\t0.133333\t0.7\t0\t0.0666667\t0.1\t0\t0"


def emotion6(photos, root, counts):
    """Emotion6/images/CLASS/N.jpg + ground_truth.txt (a header line, then tab-separated rows; the
    readme gives the columns, not the header's exact text)."""
    class_folders(photos, os.path.join(root, "images"), counts)
    lines = ["image_filename\tvalence\tarousal\tanger\tdisgust\tfear\tjoy\tsadness\tsurprise\tneutral"]
    for cls, n in counts.items():
        lines += [EMOTION6_ROW.format(name=f"{cls}/{i + 1}.jpg", v=2.5 + i, a=3.8) for i in range(n)]
    with open(os.path.join(root, "ground_truth.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "readme.txt"), "w") as f:
        f.write('"Cornell Emotion6 Image Database"\n')
