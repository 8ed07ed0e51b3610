"""Dataset readers: each turns a dataset on disk into a list of `Record`s with a split.

Layouts (README, "Sharding a dataset"):
* image folder: ``ROOT/[train|val|test/]CLASS/**/IMAGE`` (Emo8, FI, Emotion6, UnBiasedEmo,
  CAER-S, HECO releases). An optional side-car ``IMAGE_STEM.json`` next to an image holds
  attributes for the prompt and, when it has the key, ``person_box`` (null = no person).
* EmoSet: ``info.json`` + ``train.json``/``val.json``/``test.json`` listing
  ``[emotion, image_id, image_path, annotation_path]``; per-image annotation JSON.
* EMOTIC-style JSON: ``{"categories": [...], "train": [{"image": PATH, "people":
  [{"bbox": [x0, y0, x1, y1], "categories": [...]}]}], "val": [...], "test": [...]}``.
* CSV: ``path,label[,box]`` with box ``"x0 y0 x1 y1"`` (see csv_source.py).
"""
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ..errors import UserError
from .splits import SPLITS, get_preset, seeded_split

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
ATTRIBUTE_KEYS = ("scene", "object", "brightness", "colorfulness", "facial_expression", "human_action")


@dataclass
class Record:
    """One sample to be written. person_box is in pixels of the ORIGINAL image."""

    path: str
    split: str
    label: int
    label_name: str
    key: str = ""
    attributes: Dict = field(default_factory=dict)
    person_box: Optional[List[float]] = None
    box_from_annotation: bool = False  # True: the dataset said where the person is (or that none is)
    labels: Optional[List[int]] = None  # multi-label datasets (EMOTIC)
    label_names: Optional[List[str]] = None
    group: str = ""  # split group (class, or class/subfolder)


@dataclass
class SourceSet:
    records: List[Record]
    classes: List[str]
    dataset: str
    source: Dict


def make_key(text: str) -> str:
    """A WebDataset-safe key (no dots, no slashes): the sample's relative path, sanitised."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(text)[0]).strip("_") or "sample"


def assign_unique_keys(records: List[Record]) -> None:
    seen: Dict[str, int] = {}
    for rec in records:
        base = rec.key or make_key(rec.path)
        n = seen.get(base, 0)
        seen[base] = n + 1
        rec.key = base if n == 0 else f"{base}_{n}"


def check_box(box, where: str) -> Optional[List[float]]:
    if box is None:
        return None
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4:
        raise UserError(f"{where}: person box must be 4 numbers x0 y0 x1 y1, got {box!r}")
    box = values
    if box[2] <= box[0] or box[3] <= box[1]:
        raise UserError(f"{where}: person box must be x0 y0 x1 y1 with x1 > x0 and y1 > y0, got {box}")
    return box


def class_index(classes: Sequence[str], name: str, where: str) -> int:
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    if name.lower() not in lookup:
        raise UserError(f"{where}: unknown label {name!r} (known: {', '.join(classes)})")
    return lookup[name.lower()]


def load_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def require_dir(root: str) -> None:
    if not os.path.isdir(root):
        raise UserError(f"folder not found: {root}")


def split_records(records: List[Record], dataset: str, ratios=None, seed=None,
                  split: Optional[str] = None) -> None:
    """Give every record a split: forced, provided, or seeded per the dataset's preset."""
    if split is not None:
        for rec in records:
            rec.split = split
        return
    preset = get_preset(dataset, ratios, seed)
    provided = [r for r in records if r.split]
    if provided and len(provided) != len(records):
        raise UserError("some images are inside train/val/test folders and some are not")
    if provided:
        if preset.resplit_test is not None:
            tests = [r for r in records if r.split == "test"]
            parts = seeded_split(tests, lambda r: r.group, lambda r: r.path,
                                 preset.resplit_test, ("val", "test"), preset.seed)
            for name, part in parts.items():
                for rec in part:
                    rec.split = name
        return
    if preset.ratios is None:
        raise UserError(f"dataset {dataset!r} comes with its own splits: expected train/val/test "
                        "sub-folders (or pass --split NAME / --split-ratios)")
    parts = seeded_split(records, lambda r: r.group, lambda r: r.path, preset.ratios, SPLITS, preset.seed)
    for name, part in parts.items():
        for rec in part:
            rec.split = name


def _images_under(folder: str) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if f.lower().endswith(IMAGE_EXTS) and not f.startswith(".")]
    return found


def _sidecar(image_path: str, rec: Record) -> None:
    path = os.path.splitext(image_path)[0] + ".json"
    if not os.path.isfile(path):
        return
    meta = load_json(path)
    if not isinstance(meta, dict):
        raise UserError(f"{path}: side-car JSON must be an object")
    if "person_box" in meta:
        rec.person_box = check_box(meta["person_box"], path)
        rec.box_from_annotation = True
    rec.attributes = {k: v for k, v in meta.get("attributes", meta).items() if k in ATTRIBUTE_KEYS}


def read_image_folder(root: str, dataset: str = "custom", classes: Optional[Sequence[str]] = None,
                      ratios=None, seed: Optional[int] = None, split: Optional[str] = None) -> SourceSet:
    """Class-per-sub-folder images, with or without train/val/test folders above the classes."""
    require_dir(root)
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    split_dirs = [d for d in subdirs if d.lower() in SPLIT_DIRS]
    tops = [(SPLIT_DIRS[d.lower()], os.path.join(root, d)) for d in split_dirs] or [("", root)]
    found = []  # (split, class folder name, group, path)
    for split_name, top in tops:
        for cls in sorted(d for d in os.listdir(top) if os.path.isdir(os.path.join(top, d))):
            for path in _images_under(os.path.join(top, cls)):
                rel = os.path.relpath(path, os.path.join(top, cls)).split(os.sep)
                sub = f"{cls}/{rel[0]}" if len(rel) > 1 else cls
                found.append((split_name, cls, sub, path))
    if not found:
        raise UserError(f"no images found in {root} (expected ROOT/[train|val|test/]CLASS/IMAGE)")
    names = list(classes) if classes else sorted({c for _, c, _, _ in found})
    by_class = get_preset(dataset).group == "class"
    records = []
    for split_name, cls, sub, path in found:
        idx = class_index(names, cls, path)
        rec = Record(path=path, split=split_name, label=idx, label_name=names[idx],
                     key=make_key(os.path.relpath(path, root)), group=cls if by_class else sub)
        _sidecar(path, rec)
        records.append(rec)
    split_records(records, dataset, ratios, seed, split)
    assign_unique_keys(records)
    return SourceSet(records, names, dataset, {"format": "folder", "path": os.path.abspath(root)})


def read_emoset(root: str, dataset: str = "emoset") -> SourceSet:
    """EmoSet-118K's own layout; labels follow its info.json (emotion.label2idx)."""
    require_dir(root)
    info = load_json(os.path.join(root, "info.json"))
    try:
        label2idx = info["emotion"]["label2idx"]
    except (KeyError, TypeError):
        raise UserError(f"{root}/info.json: missing emotion.label2idx") from None
    names = [n for n, _ in sorted(label2idx.items(), key=lambda kv: int(kv[1]))]
    records = []
    for split_name in SPLITS:
        list_path = os.path.join(root, f"{split_name}.json")
        if not os.path.isfile(list_path):
            continue
        for i, item in enumerate(load_json(list_path)):
            where = f"{list_path} entry {i}"
            if not isinstance(item, list) or len(item) < 3:
                raise UserError(f"{where}: expected [emotion, image_id, image_path, annotation_path]")
            emotion, image_path = str(item[0]), item[2]
            idx = class_index(names, emotion, where)
            rec = Record(path=os.path.join(root, image_path), split=split_name, label=idx,
                         label_name=names[idx], key=make_key(str(item[1])), group=names[idx])
            if len(item) > 3 and os.path.isfile(os.path.join(root, item[3])):
                ann = load_json(os.path.join(root, item[3]))
                rec.attributes = {k: ann[k] for k in ATTRIBUTE_KEYS if k in ann}
            records.append(rec)
    if not records:
        raise UserError(f"no samples found in {root} (expected train.json/val.json/test.json)")
    assign_unique_keys(records)
    return SourceSet(records, names, dataset, {"format": "emoset", "path": os.path.abspath(root)})


EMOTIC_CATEGORIES = (
    "Affection", "Anger", "Annoyance", "Anticipation", "Aversion", "Confidence", "Disapproval",
    "Disconnection", "Disquietment", "Doubt/Confusion", "Embarrassment", "Engagement", "Esteem",
    "Excitement", "Fatigue", "Fear", "Happiness", "Pain", "Peace", "Pleasure", "Sadness",
    "Sensitivity", "Suffering", "Surprise", "Sympathy", "Yearning")


def read_emotic(annotation_file: str, image_root: Optional[str] = None,
                dataset: str = "emotic") -> SourceSet:
    """EMOTIC-style JSON: one sample per annotated person, its box and its categories."""
    ann = load_json(annotation_file)
    if not isinstance(ann, dict):
        raise UserError(f"{annotation_file}: expected an object with train/val/test lists")
    names = list(ann.get("categories") or EMOTIC_CATEGORIES)
    image_root = image_root or os.path.dirname(os.path.abspath(annotation_file))
    records = []
    for split_name in SPLITS:
        for i, entry in enumerate(ann.get(split_name) or []):
            where = f"{annotation_file} {split_name}[{i}]"
            if not isinstance(entry, dict) or "image" not in entry:
                raise UserError(f"{where}: expected an object with 'image' and 'people'")
            for j, person in enumerate(entry.get("people") or []):
                cats = person.get("categories") or []
                if not cats:
                    raise UserError(f"{where} person {j}: no categories")
                labels = [class_index(names, str(c), f"{where} person {j}") for c in cats]
                rec = Record(path=os.path.join(image_root, entry["image"]), split=split_name,
                             label=labels[0], label_name=names[labels[0]],
                             key=make_key(f"{entry['image']}_p{j}"), labels=labels,
                             label_names=[names[k] for k in labels],
                             person_box=check_box(person.get("bbox"), f"{where} person {j}"),
                             box_from_annotation=True)
                records.append(rec)
    if not records:
        raise UserError(f"{annotation_file}: no annotated people in train/val/test")
    assign_unique_keys(records)
    return SourceSet(records, names, dataset, {"format": "emotic", "path": os.path.abspath(annotation_file)})
