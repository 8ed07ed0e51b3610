"""What every dataset reader shares: the `Record` it makes per sample, the `SourceSet` it returns,
keys, boxes, JSON files, and giving every record its split.

The readers, one module each (docs/data.md has every dataset's layout as downloaded):
folder_source.py (class folders: Emo8, FI, Emotion6, UnBiasedEmo, CAER-S, HECO),
emoset_source.py, emotic_source.py (EMOTIC-style JSON, Annotations.mat, Tandon-A's CSVs),
csv_source.py (``path,label[,box]``); catalog.py picks one.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..errors import UserError
from ..io import read_json
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
    annotations: Dict = field(default_factory=dict)  # the dataset's own per-sample values (VAD, ...)


@dataclass
class SourceSet:
    records: List[Record]
    classes: List[str]  # in label order, as the dataset spells them
    dataset: str
    source: Dict
    label_order: str = ""  # the manifest's statement of how labels are ordered
    skipped: Dict[str, int] = field(default_factory=dict)  # annotated samples left out, by reason


def make_key(text: str) -> str:
    """A WebDataset-safe key (no dots: WebDataset cuts a member name at its first dot; no slashes):
    the sample's relative path, sanitised. Different names can give one key (dropped characters,
    dots and spaces made ``_``): `assign_unique_keys` settles that."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(text)[0]).strip("_") or "sample"


def assign_unique_keys(records: List[Record]) -> None:
    """Every record its own key, in record order: a key already taken (compared without case, so no
    file system or tool that ignores case can merge two) gets the first free ``_1``, ``_2`` ...
    suffix, checked against every key given so far, including those that came with a suffix."""
    taken = set()
    for rec in records:
        base = rec.key or make_key(rec.path)
        key, n = base, 0
        while key.casefold() in taken:
            n += 1
            key = f"{base}_{n}"
        taken.add(key.casefold())
        rec.key = key


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


def load_json(path: str):
    return read_json(path)


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
    provided = {r.split for r in records if r.split}
    if provided and not all(r.split for r in records):
        raise UserError("some images are inside train/val/test folders and some are not")
    if provided:
        # An official train/test release (CAER-S) gets its val cut from test; a folder that
        # already has val (the release's split download) keeps its splits as they are.
        if preset.resplit_test is not None and "val" not in provided:
            tests = [r for r in records if r.split == "test"]
            fractions = (preset.resplit_test, 1.0 - preset.resplit_test)
            _assign(seeded_split(tests, lambda r: r.group, lambda r: r.path, fractions, ("test", "val"),
                                 preset.seed, preset.rule))
        return
    if preset.ratios is None:
        raise UserError(f"dataset {dataset!r} comes with its own splits: expected train/val/test "
                        "sub-folders (or pass --split NAME / --split-ratios)")
    _assign(seeded_split(records, lambda r: r.group, lambda r: r.path, preset.ratios, SPLITS, preset.seed,
                         preset.rule))


def _assign(parts: Dict[str, List[Record]]) -> None:
    for name, part in parts.items():
        for rec in part:
            rec.split = name
