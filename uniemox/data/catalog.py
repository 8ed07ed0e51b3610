"""One entry to every source format: `open_source(path, fmt="auto", ...)`."""
import os
from typing import Optional, Sequence

from ..errors import UserError
from .csv_source import read_csv
from .sources import SourceSet, read_emoset, read_emotic, read_image_folder
from .splits import ALIASES, PRESETS

FORMATS = ("auto", "folder", "emoset", "emotic", "csv")


def detect_format(path: str) -> str:
    if os.path.isfile(path):
        if path.lower().endswith(".csv"):
            return "csv"
        if path.lower().endswith(".json"):
            return "emotic"
        raise UserError(f"cannot tell the format of {path}: pass --format")
    if os.path.isdir(path):
        if all(os.path.isfile(os.path.join(path, f)) for f in ("info.json", "train.json")):
            return "emoset"
        return "folder"
    raise UserError(f"not found: {path}")


def open_source(path: str, fmt: str = "auto", dataset: Optional[str] = None,
                classes: Optional[Sequence[str]] = None, ratios: Optional[Sequence[float]] = None,
                seed: Optional[int] = None, split: Optional[str] = None,
                image_root: Optional[str] = None) -> SourceSet:
    """Read a dataset; `dataset` names the split preset (emo8, fi, emotion6, ube, caer-s, heco,
    emoset, emotic, custom); `split` forces every sample into one split."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if dataset is not None and ALIASES.get(dataset.lower(), dataset.lower()) not in PRESETS:
        raise UserError(f"unknown dataset {dataset!r} (choose from {', '.join(PRESETS)})")
    if split is not None and split not in ("train", "val", "test"):
        raise UserError(f"--split must be train, val or test, got {split!r}")
    if fmt == "emoset":
        return read_emoset(path, dataset=dataset or "emoset")
    if fmt == "emotic":
        return read_emotic(path, image_root=image_root, dataset=dataset or "emotic")
    if fmt == "csv":
        return read_csv(path, dataset=dataset or "custom", classes=classes, root=image_root,
                        ratios=ratios, seed=seed, split=split)
    return read_image_folder(path, dataset=dataset or "custom", classes=classes, ratios=ratios,
                             seed=seed, split=split)
