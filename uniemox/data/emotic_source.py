"""EMOTIC: one sample per annotated person, its body box as the person box, all its categories as
labels, valence/arousal/dominance (and gender, age) kept in the sample's JSON.

Three ways in, one record builder (`person_record`):
* the official ``Annotations/Annotations.mat`` (emotic_mat.py), images in ``emotic/FOLDER/FILE``;
* Tandon-A/emotic's CSVs (``mat2py.py`` writes ``emotic_pre/{train,val,test}.csv`` with the header
  ``Index,Folder,Filename,Image Size,BBox,Categorical_Labels,Continuous_Labels,Gender,Age``;
  lists are Python literals, read with ast.literal_eval, which evaluates literals only);
* this project's EMOTIC-style JSON: ``{"categories": [...], "train": [{"image": PATH, "people":
  [{"bbox": [x0, y0, x1, y1], "categories": [...]}]}], "val": [...], "test": [...]}``.
A person without categories, or whose box is not a box, is skipped and counted in the manifest.
"""
import ast
import csv
import os
from collections import Counter
from typing import Dict, List, Optional, Sequence

from ..errors import UserError
from .classes import EMOTIC_CATEGORIES, class_index, label_order
from .sources import Record, SourceSet, assign_unique_keys, check_box, load_json, make_key
from .splits import SPLITS

TANDON_HEADER = ["Index", "Folder", "Filename", "Image Size", "BBox", "Categorical_Labels",
                 "Continuous_Labels", "Gender", "Age"]


def person_record(names: Sequence[str], path: str, split: str, key: str, box, categories: Sequence[str],
            where: str, skipped: Counter, annotations: Optional[Dict] = None) -> Optional[Record]:
    """The record of one person, or None (counted in `skipped`) when it cannot be one."""
    if not categories:
        skipped["person_without_categories"] += 1
        return None
    try:
        box = check_box(box, where)
    except UserError:
        skipped["person_without_box"] += 1
        return None
    labels = list(dict.fromkeys(class_index(names, str(c), where, "emotic") for c in categories))
    return Record(path=path, split=split, label=labels[0], label_name=names[labels[0]], key=key, labels=labels,
                  label_names=[names[k] for k in labels], person_box=box, box_from_annotation=True,
                  annotations={k: v for k, v in dict(annotations or {}).items() if v is not None})


def finish(records: List[Record], names: Sequence[str], dataset: str, source: Dict, skipped: Counter,
           where: str) -> SourceSet:
    if not records:
        raise UserError(f"{where}: no annotated people in train/val/test ({dict(skipped) or 'none found'})")
    assign_unique_keys(records)
    order = label_order("emotic") if list(names) == list(EMOTIC_CATEGORIES) else "as listed in 'categories'"
    return SourceSet(records, list(names), dataset, source, label_order=order, skipped=dict(skipped))


def read_emotic(annotation_file: str, image_root: Optional[str] = None, dataset: str = "emotic") -> SourceSet:
    """EMOTIC-style JSON (module doc)."""
    ann = load_json(annotation_file)
    if not isinstance(ann, dict):
        raise UserError(f"{annotation_file}: expected an object with train/val/test lists")
    names = list(ann.get("categories") or EMOTIC_CATEGORIES)
    image_root = image_root or os.path.dirname(os.path.abspath(annotation_file))
    records, skipped = [], Counter()
    for split_name in SPLITS:
        for i, entry in enumerate(ann.get(split_name) or []):
            where = f"{annotation_file} {split_name}[{i}]"
            if not isinstance(entry, dict) or "image" not in entry:
                raise UserError(f"{where}: expected an object with 'image' and 'people'")
            for j, person in enumerate(entry.get("people") or []):
                if not isinstance(person, dict):
                    raise UserError(f"{where} person {j}: expected an object with 'bbox' and 'categories'")
                rec = person_record(names, os.path.join(image_root, entry["image"]), split_name,
                                    make_key(f"{entry['image']}_p{j}"), person.get("bbox"),
                                    person.get("categories") or [], f"{where} person {j}", skipped,
                                    person.get("annotations"))
                records += [rec] if rec else []
    return finish(records, names, dataset, {"format": "emotic", "path": os.path.abspath(annotation_file)},
                  skipped, annotation_file)


def is_tandon_csv(path: str) -> bool:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [c.strip() for c in next(csv.reader(f), [])] == TANDON_HEADER
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def _literal(text: str, where: str, column: str):
    try:
        return ast.literal_eval(text.strip()) if text.strip() else None
    except (ValueError, SyntaxError):
        raise UserError(f"{where}: {column} is not a Python list literal: {text!r}") from None


def _vad(text: str, where: str) -> Dict[str, float]:
    values = _literal(text, where, "Continuous_Labels") or []
    try:
        return dict(zip(("valence", "arousal", "dominance"), (float(v) for v in values))) if len(values) == 3 else {}
    except (TypeError, ValueError):
        raise UserError(f"{where}: Continuous_Labels must be 3 numbers [valence, arousal, dominance], got {text!r}") from None


def _tandon_files(path: str, split: Optional[str]) -> List[tuple]:
    if os.path.isdir(path):
        files = [(s, os.path.join(path, f"{s}.csv")) for s in SPLITS if is_tandon_csv(os.path.join(path, f"{s}.csv"))]
        if not files:
            raise UserError(f"{path}: no train.csv/val.csv/test.csv with Tandon-A's header {','.join(TANDON_HEADER)}")
        return files
    name = split or os.path.splitext(os.path.basename(path))[0].lower()
    if name not in SPLITS:
        raise UserError(f"{path}: cannot tell its split from its name: pass --split train, val or test")
    return [(name, path)]


def read_tandon_csv(path: str, image_root: Optional[str] = None, dataset: str = "emotic",
                    split: Optional[str] = None) -> SourceSet:
    """Tandon-A's CSVs: one file (its split from its name, or --split) or their folder."""
    files = _tandon_files(path, split)
    csv_dir = os.path.dirname(os.path.abspath(files[0][1]))
    if image_root is None:  # mat2py.py: DATA/emotic_pre/*.csv, images in DATA/emotic/FOLDER/FILE
        image_root = next((d for d in (os.path.join(os.path.dirname(csv_dir), "emotic"), csv_dir)
                           if os.path.isdir(d)), csv_dir)
    names, records, skipped = EMOTIC_CATEGORIES, [], Counter()
    for split_name, csv_path in files:
        with open(csv_path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                where = f"{csv_path} row {row.get('Index', '?')}"
                if any(row.get(c) is None for c in TANDON_HEADER):
                    raise UserError(f"{where}: expected the columns {','.join(TANDON_HEADER)}")
                cats = _literal(row["Categorical_Labels"], where, "Categorical_Labels") or []
                rel = os.path.join(row["Folder"], row["Filename"])
                rec = person_record(names, os.path.join(image_root, rel), split_name, make_key(rel),
                                    _literal(row["BBox"], where, "BBox"), [cats] if isinstance(cats, str) else cats,
                                    where, skipped, dict(_vad(row["Continuous_Labels"], where),
                                                         gender=row["Gender"] or None, age=row["Age"] or None))
                records += [rec] if rec else []
    source = {"format": "emotic-csv", "path": os.path.abspath(path), "image_root": os.path.abspath(image_root)}
    return finish(records, names, dataset, source, skipped, path)
