"""EMOTIC's official ``Annotations/Annotations.mat``, read with scipy.io.loadmat.

Layout (Kosti et al.; read the same way by Tandon-A/emotic's mat2py.py and other public
loaders): struct arrays ``train``, ``val``, ``test``, one entry per image with ``filename``,
``folder`` (e.g. ``mscoco/images``), ``image_size``, ``original_database`` and ``person`` (one
entry per annotated person). A person has ``body_bbox`` ``[x1 y1 x2 y2]``, ``gender``, ``age`` and:
* train: ``annotations_categories`` (one annotator: ``.categories``, a cell of names) and
  ``annotations_continuous`` (``.valence``, ``.arousal``, ``.dominance``);
* val/test: per-annotator ``annotations_categories``/``annotations_continuous`` plus
  ``combined_categories`` (cell of names) and ``combined_continuous`` (struct).
Labels are the combined categories where the file has them (else the union of the annotators'),
valence/arousal/dominance the combined values (else the one annotator's). Images live in
``ROOT/emotic/FOLDER/FILENAME`` next to ``ROOT/Annotations/``.
"""
import math
import os
from collections import Counter
from typing import Dict, List, Optional

from ..errors import UserError
from .classes import EMOTIC_CATEGORIES
from .emotic_source import person_record, finish
from .sources import make_key
from .splits import SPLITS


def _items(value) -> List:
    """loadmat(simplify_cells=True) squeezes a 1x1 struct to a dict and a 1x1 cell to its value:
    whatever came back, the list of its elements."""
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        return [value]
    try:
        return list(value.ravel()) if hasattr(value, "ravel") else list(value)
    except TypeError:
        return [value]


def _names(value) -> List[str]:
    return [str(v).strip() for v in _items(value) if str(v).strip()]


def _categories(person: Dict) -> List[str]:
    combined = _names(person.get("combined_categories"))
    if combined:
        return combined
    seen: List[str] = []
    for annotation in _items(person.get("annotations_categories")):
        seen += [c for c in _names(annotation.get("categories") if isinstance(annotation, dict) else None)
                 if c not in seen]
    return seen


def _number(value) -> Optional[float]:
    items = _items(value)
    try:
        number = float(items[0]) if len(items) == 1 else None
    except (TypeError, ValueError):
        return None
    return None if number is None or math.isnan(number) else number


def _vad(person: Dict) -> Dict[str, Optional[float]]:
    table = person.get("combined_continuous")
    if not isinstance(table, dict):
        annotators = [a for a in _items(person.get("annotations_continuous")) if isinstance(a, dict)]
        table = annotators[0] if len(annotators) == 1 else {}
    return {k: _number(table.get(k)) for k in ("valence", "arousal", "dominance")}


def _box(value) -> Optional[List[float]]:
    try:
        return [float(v) for v in _items(value)]
    except (TypeError, ValueError):
        return None  # not numbers: person_record counts the person as one without a box


def _text(value) -> Optional[str]:
    return value.strip() or None if isinstance(value, str) else None


def load_annotations(path: str) -> Dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError("reading EMOTIC's Annotations.mat needs scipy: pip install scipy") from None
    try:
        mat = loadmat(path, simplify_cells=True)
    except Exception as e:  # not a MATLAB file, truncated, HDF5 (v7.3) ...
        raise UserError(f"cannot read {path} as a MATLAB .mat file: {type(e).__name__}: {' '.join(str(e).split())}") from None
    if not any(s in mat for s in SPLITS):
        raise UserError(f"{path}: no train/val/test struct arrays (is this EMOTIC's Annotations.mat?)")
    return mat


def default_image_root(mat_path: str) -> str:
    """ROOT/emotic for ROOT/Annotations/Annotations.mat (the download's layout), else the .mat's folder."""
    mat_dir = os.path.dirname(os.path.abspath(mat_path))
    candidates = [os.path.join(os.path.dirname(mat_dir), "emotic"), os.path.join(mat_dir, "emotic")]
    return next((d for d in candidates if os.path.isdir(d)), mat_dir)


def read_emotic_mat(path: str, image_root: Optional[str] = None, dataset: str = "emotic"):
    mat = load_annotations(path)
    image_root = image_root or default_image_root(path)
    names, records, skipped = EMOTIC_CATEGORIES, [], Counter()
    for split_name in SPLITS:
        for i, entry in enumerate(_items(mat.get(split_name))):
            if not isinstance(entry, dict) or "filename" not in entry or "person" not in entry:
                raise UserError(f"{path}: {split_name}({i + 1}) has no filename/person fields")
            rel = os.path.join(str(entry.get("folder") or ""), str(entry["filename"]))
            for j, person in enumerate(p for p in _items(entry["person"]) if isinstance(p, dict)):
                rec = person_record(names, os.path.join(image_root, rel), split_name, make_key(f"{rel}_p{j}"),
                                    _box(person.get("body_bbox")), _categories(person),
                                    f"{path} {split_name}({i + 1}).person({j + 1})", skipped,
                                    dict(_vad(person), gender=_text(person.get("gender")), age=_text(person.get("age"))))
                records += [rec] if rec else []
    source = {"format": "emotic-mat", "path": os.path.abspath(path), "image_root": os.path.abspath(image_root)}
    return finish(records, names, dataset, source, skipped, path)
