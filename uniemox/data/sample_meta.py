"""The JSON of a shard sample, checked field by field in the reader's worker: a sample whose
fields cannot be what the trainers assume is skipped and counted under its kind, like a corrupt
image, instead of failing a batch or being silently wrong.

    label        int >= 0 (and < the class count where it is known); never a bool
    labels       (multi-label) a non-empty list of such ints
    person_box   null, or 4 finite numbers x0 y0 x1 y1 with x1 > x0 and y1 > y0
    attributes   absent/null or an object of text, numbers and lists of text/numbers
    label_name(s) text, where present
"""
import math
from numbers import Real
from typing import Any, Optional

SKIP_KINDS = ("bad_json", "bad_label", "bad_person_box", "bad_attributes")


def _index(value: Any, class_count: Optional[int]) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= 0
            and (class_count is None or value < class_count))


def _box(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return False
    if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return False
    return value[2] > value[0] and value[3] > value[1]


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (str, Real)) and not isinstance(v, bool) for v in value)
    return value is None or isinstance(value, (str, Real)) and not isinstance(value, bool)


def check_meta(meta: Any, class_count: Optional[int] = None) -> Optional[str]:
    """None for a usable sample, else the kind (one of SKIP_KINDS) and why: "kind: reason"."""
    if not isinstance(meta, dict):
        return f"bad_json: a {type(meta).__name__}, not an object"
    if not _index(meta.get("label"), class_count):
        return f"bad_label: label {meta.get('label')!r} (classes: {class_count or 'unknown'})"
    labels = meta.get("labels")
    if labels is not None and not (isinstance(labels, list) and labels and all(_index(v, class_count) for v in labels)):
        return f"bad_label: labels {labels!r}"
    for key in ("label_name",):
        if key in meta and not isinstance(meta[key], str):
            return f"bad_label: {key} {meta[key]!r}"
    if "label_names" in meta and not (isinstance(meta["label_names"], list)
                                      and all(isinstance(n, str) for n in meta["label_names"])):
        return f"bad_label: label_names {meta['label_names']!r}"
    if not _box(meta.get("person_box")):
        return f"bad_person_box: {meta.get('person_box')!r}"
    attributes = meta.get("attributes")
    if attributes is not None and not (isinstance(attributes, dict) and all(_plain(v) for v in attributes.values())):
        return f"bad_attributes: {attributes!r}"[:200]
    return None
