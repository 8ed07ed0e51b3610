"""CSV source: one ``path,label[,box]`` row per image.

* path: relative to the CSV's folder (or to ``root``), or absolute.
* label: a class name, or an integer index into ``classes`` when those are given.
* box (optional): the person box ``"x0 y0 x1 y1"`` in pixels of the original image; an
  empty field means "not annotated" (the detector decides), ``none`` means "no person".
* A first row ``path,label[,box]`` is taken as a header and skipped.
Any unreadable row is a UserError naming its line number.
"""
import csv
import os
from typing import Optional, Sequence

from ..errors import UserError
from .classes import class_index, known_classes, label_order, match_classes
from .sources import Record, SourceSet, assign_unique_keys, check_box, make_key, split_records


def _parse_box(field: str, where: str):
    field = field.strip()
    if not field:
        return None, False
    if field.lower() in ("none", "null"):
        return None, True
    parts = field.replace(",", " ").replace(";", " ").split()
    try:
        return check_box([float(p) for p in parts], where), True
    except ValueError:
        raise UserError(f"{where}: person box must be 4 numbers 'x0 y0 x1 y1', got {field!r}") from None


def read_csv(csv_path: str, dataset: str = "custom", classes: Optional[Sequence[str]] = None,
             root: Optional[str] = None, ratios=None, seed: Optional[int] = None,
             split: Optional[str] = None) -> SourceSet:
    if not os.path.isfile(csv_path):
        raise UserError(f"file not found: {csv_path}")
    root = root or os.path.dirname(os.path.abspath(csv_path))
    parsed = []  # (where, path, label, box, annotated)
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            for row in reader:
                where = f"{csv_path} line {reader.line_num}"
                if not row or all(not c.strip() for c in row):
                    continue
                if reader.line_num == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                    continue
                if len(row) not in (2, 3) or not row[0].strip() or not row[1].strip():
                    raise UserError(f"{where}: expected 'path,label[,box]', got {','.join(row)!r}")
                box, annotated = _parse_box(row[2], where) if len(row) == 3 else (None, False)
                parsed.append((where, row[0].strip(), row[1].strip(), box, annotated))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{csv_path}: cannot read as CSV ({e})") from None
    if not parsed:
        raise UserError(f"{csv_path}: no rows")
    if known_classes(dataset):  # a list may hold some of the classes; their order stays the dataset's
        names = match_classes(dataset, {p[2] for p in parsed if not p[2].isdigit()}, csv_path, exact=False)
        order = label_order(dataset)
    else:
        names = list(classes) if classes else sorted({p[2] for p in parsed})
        order = "as given by --classes" if classes else "sorted labels"
    records = []
    for where, path, label, box, annotated in parsed:
        if (classes or known_classes(dataset)) and label.isdigit():
            if int(label) >= len(names):
                raise UserError(f"{where}: unknown label index {label} (there are {len(names)} classes)")
            idx = int(label)
        else:
            idx = class_index(names, label, where, dataset)
        records.append(Record(path=os.path.join(root, path), split="", label=idx, label_name=names[idx],
                              key=make_key(path), person_box=box, box_from_annotation=annotated,
                              group=names[idx]))
    split_records(records, dataset, ratios, seed, split)
    assign_unique_keys(records)
    return SourceSet(records, names, dataset, {"format": "csv", "path": os.path.abspath(csv_path)},
                     label_order=order)
