"""EmoSet-118K as it unpacks (JingyuanYY/EmoSet README and
https://github.com/JingyuanYY/EmoSet/issues/2; chincharles/u-emo ``datasets/build_dataset.py``):

    ROOT/info.json   ROOT/{train,val,test}.json   ROOT/image/EMO/EMO_N.jpg   ROOT/annotation/EMO/EMO_N.json

* ``info.json``: the download's flat ``{"label2idx", "idx2label"}`` (the release reads this one)
  or the GitHub repository's nested ``{"emotion": {"label2idx", ...}, "brightness": ..., ...}``.
* split rows: ``[emotion, "image/...jpg", "annotation/...json"]`` in the download (the
  release's form) or ``[emotion, image_id, image_path, annotation_path]`` in the README. Which
  field is the image and which the annotation is told by what the file is (its extension),
  never by position alone.
* annotation JSON: ``scene`` (str), ``object`` (list of str), ``brightness`` and ``colorfulness``
  (numbers 0.0-1.0 in steps of 0.1; info.json keys them as the strings "0.0".."1.0"),
  ``facial_expression`` and ``human_action`` (str); absent when not annotated.

Labels follow the one Mikels order of classes.py, not info.json's (which is recorded).
"""
import os
from typing import Dict, List, Optional, Tuple

from ..errors import UserError
from .classes import class_index, label_order, match_classes
from .sources import IMAGE_EXTS, Record, SourceSet, assign_unique_keys, load_json, make_key, require_dir
from .splits import SPLITS

NUMBER_ATTRIBUTES = ("brightness", "colorfulness")
TEXT_ATTRIBUTES = ("scene", "facial_expression", "human_action")


def emotion_label2idx(info, where: str) -> Dict[str, int]:
    """info.json's emotion mapping, from either of its two forms."""
    table = info.get("emotion", info) if isinstance(info, dict) else None
    label2idx = table.get("label2idx") if isinstance(table, dict) else None
    if not isinstance(label2idx, dict) or not label2idx:
        raise UserError(f"{where}: expected label2idx (flat, as downloaded) or emotion.label2idx "
                        "(nested, as on GitHub)")
    return label2idx


def _fields(item, where: str) -> Tuple[str, Optional[str], str]:
    """(image path, annotation path or None, image id) of one split row."""
    if not isinstance(item, list) or len(item) not in (3, 4) or not all(isinstance(v, str) for v in item[1:]):
        raise UserError(f"{where}: expected [emotion, image, annotation] or [emotion, image_id, image, annotation]")
    images = [v for v in item[1:] if v.lower().endswith(IMAGE_EXTS)]
    notes = [v for v in item[1:] if v.lower().endswith(".json")]
    if len(images) != 1 or len(notes) > 1:
        raise UserError(f"{where}: cannot tell the image (one of {', '.join(IMAGE_EXTS)}) from the "
                        f"annotation (.json) in {item!r}")
    others = [v for v in item[1:] if v not in images + notes]
    image_id = others[0] if others else os.path.splitext(os.path.basename(images[0]))[0]
    return images[0], (notes[0] if notes else None), image_id


def read_attributes(path: str) -> Dict:
    """The prompt attributes of one annotation file, with the value types EmoSet really has."""
    ann = load_json(path)
    if not isinstance(ann, dict):
        raise UserError(f"{path}: an EmoSet annotation must be a JSON object")
    out: Dict = {}
    for key in NUMBER_ATTRIBUTES:
        if ann.get(key) is not None:
            try:
                out[key] = float(ann[key])  # 0.6 and "0.6" both occur in the wild: one type here
            except (TypeError, ValueError):
                raise UserError(f"{path}: {key} must be a number, got {ann[key]!r}") from None
    for key in TEXT_ATTRIBUTES:
        if isinstance(ann.get(key), str) and ann[key].strip():
            out[key] = ann[key].strip()
    objects = ann.get("object")
    objects = [objects] if isinstance(objects, str) else objects
    if isinstance(objects, list) and any(str(o).strip() for o in objects):
        out["object"] = [str(o).strip() for o in objects if str(o).strip()]
    return out


def read_emoset(root: str, dataset: str = "emoset") -> SourceSet:
    require_dir(root)
    info_path = os.path.join(root, "info.json")
    label2idx = emotion_label2idx(load_json(info_path), info_path)
    names = match_classes("emoset", label2idx, info_path)
    records: List[Record] = []
    for split_name in SPLITS:
        list_path = os.path.join(root, f"{split_name}.json")
        if not os.path.isfile(list_path):
            continue
        rows = load_json(list_path)
        if not isinstance(rows, list):
            raise UserError(f"{list_path}: expected a list of rows")
        for i, item in enumerate(rows):
            where = f"{list_path} entry {i}"
            image, note, image_id = _fields(item, where)
            idx = class_index(names, str(item[0]), where)
            rec = Record(path=os.path.join(root, image), split=split_name, label=idx, label_name=names[idx],
                         key=make_key(image_id), group=names[idx])
            if note is not None and os.path.isfile(os.path.join(root, note)):
                rec.attributes = read_attributes(os.path.join(root, note))
            records.append(rec)
    if not records:
        raise UserError(f"no samples found in {root} (expected train.json/val.json/test.json)")
    assign_unique_keys(records)
    source = {"format": "emoset", "path": os.path.abspath(root),
              "info_label2idx": {k: int(v) for k, v in label2idx.items()}}
    return SourceSet(records, names, dataset, source, label_order=label_order("emoset"))
