"""Emotion6's ``ground_truth.txt`` (Cornell download, next to ``images/``) into each sample's JSON.

Format (the archive's readme.txt): a header line, then one tab-separated line per image,
``[image_filename] [valence] [arousal] [prob. anger] [prob. disgust] [prob. fear] [prob. joy]
[prob. sadness] [prob. surprise] [prob. neutral]``, e.g. ``disgust/1.jpg  2.5  3.8  0.133333
0.7  0  0.0666667  0.1  0  0``, the file name relative to ``images/``.
"""
import os
from typing import Dict, List

from ..errors import UserError
from .sources import Record

GROUND_TRUTH = "ground_truth.txt"
DISTRIBUTION = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")


def read_ground_truth(path: str) -> Dict[str, Dict]:
    """{image path relative to images/ (lower case, '/'): {"valence", "arousal", "emotion_distribution"}}."""
    rows: Dict[str, Dict] = {}
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text file ({e})") from None
    for number, line in enumerate(lines, 1):
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields if f.strip()]
        if not fields:
            continue
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            values = []
        if number == 1 and not values:  # the header line ("except the first line", says the readme)
            continue
        if len(values) != 2 + len(DISTRIBUTION):
            raise UserError(f"{path} line {number}: expected an image name and 9 numbers (valence, "
                            f"arousal, 7 emotion probabilities), got {line.strip()!r}")
        rows[fields[0].replace("\\", "/").lower()] = {
            "valence": values[0], "arousal": values[1],
            "emotion_distribution": dict(zip(DISTRIBUTION, values[2:]))}
    return rows


def attach_ground_truth(records: List[Record], root: str, images_root: str) -> Dict:
    """Give each record its ground-truth row (by its path below the class folders); returns what
    the manifest's source records about it. No file: nothing attached, nothing recorded."""
    path = next((p for p in (os.path.join(root, GROUND_TRUTH), os.path.join(images_root, GROUND_TRUTH),
                             os.path.join(os.path.dirname(images_root), GROUND_TRUTH)) if os.path.isfile(p)), None)
    if path is None:
        return {}
    rows = read_ground_truth(path)
    matched = 0
    for rec in records:
        rel = os.path.relpath(rec.path, images_root).replace(os.sep, "/").lower()
        # the release's split download has train/CLASS/N.jpg: match on CLASS/N.jpg
        row = rows.get(rel) or rows.get("/".join(rel.split("/")[-2:]))
        if row is not None:
            rec.annotations = dict(row)
            matched += 1
    return {"ground_truth": {"file": os.path.abspath(path), "rows": len(rows), "matched": matched}}
