"""One entry to every source format: `open_source(path, fmt="auto", ...)`, and telling them apart."""
import os
from typing import Optional, Sequence

from ..errors import UserError
from ..io import read_json
from .classes import known_classes, match_classes
from .csv_source import read_csv
from .emoset_source import read_emoset
from .emotic_mat import read_emotic_mat
from .emotic_source import is_tandon_csv, read_emotic, read_tandon_csv
from .folder_source import read_image_folder
from .sources import SourceSet
from .splits import PRESETS, SPLITS, preset_name

FORMAT_HELP = {
    "folder": "class folders ROOT/[train|val|test/]CLASS/IMAGE (Emo8, FI, Emotion6, UnBiasedEmo, CAER-S, HECO)",
    "emoset": "EmoSet-118K's folder (info.json, train/val/test.json, image/, annotation/)",
    "emotic": "EMOTIC-style JSON {categories, train/val/test: [{image, people: [{bbox, categories}]}]}",
    "emotic-mat": "EMOTIC's Annotations/Annotations.mat, or the folder holding Annotations/ and emotic/",
    "emotic-csv": "Tandon-A/emotic's train/val/test.csv (one file, or their folder)",
    "csv": "a list of path,label[,box] rows",
}
FORMATS = ("auto",) + tuple(FORMAT_HELP)


def _cannot_tell(path: str, hint: str = "") -> UserError:
    choices = "; ".join(f"{name}: {text}" for name, text in FORMAT_HELP.items())
    return UserError(f"cannot tell the format of {path}{hint}: pass --format NAME ({choices})")


def _mat_in(folder: str) -> Optional[str]:
    return next((p for p in (os.path.join(folder, "Annotations", "Annotations.mat"),
                             os.path.join(folder, "Annotations.mat")) if os.path.isfile(p)), None)


def _detect_json(path: str) -> str:
    data = read_json(path)
    if isinstance(data, dict) and any(isinstance(data.get(s), list) for s in SPLITS):
        return "emotic"
    if isinstance(data, list) or os.path.basename(path) == "info.json":  # an EmoSet file, not its dataset
        raise UserError(f"{path} is one of EmoSet's files: point at its folder (the one holding info.json), "
                        "which is read as --format emoset")
    raise _cannot_tell(path, " (a JSON file, but not EMOTIC-style)")


def _detect_file(path: str) -> str:
    low = path.lower()
    if low.endswith(".mat"):
        return "emotic-mat"
    if low.endswith(".csv"):
        return "emotic-csv" if is_tandon_csv(path) else "csv"
    if low.endswith(".json"):
        return _detect_json(path)
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        first = ""
    if "," in first:
        raise _cannot_tell(path, " (it reads as comma-separated text: --format csv for path,label[,box] rows)")
    raise _cannot_tell(path)


def detect_format(path: str) -> str:
    if os.path.isfile(path):
        return _detect_file(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "info.json")) and \
                any(os.path.isfile(os.path.join(path, f"{s}.json")) for s in SPLITS):
            return "emoset"
        if _mat_in(path):
            return "emotic-mat"
        if any(is_tandon_csv(os.path.join(path, f"{s}.csv")) for s in SPLITS):
            return "emotic-csv"
        return "folder"
    raise UserError(f"not found: {path}")


def open_source(path: str, fmt: str = "auto", dataset: Optional[str] = None,
                classes: Optional[Sequence[str]] = None, ratios: Optional[Sequence[float]] = None,
                seed: Optional[int] = None, split: Optional[str] = None,
                image_root: Optional[str] = None) -> SourceSet:
    """Read a dataset; `dataset` names its preset (emo8, fi, emotion6, ube, caer-s, heco, emoset,
    emotic, custom): its classes, label order and splits; `split` forces every sample into one split."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if dataset is not None and preset_name(dataset) not in PRESETS:
        raise UserError(f"unknown dataset {dataset!r} (choose from {', '.join(PRESETS)})")
    if split is not None and split not in SPLITS:
        raise UserError(f"--split must be train, val or test, got {split!r}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    name = preset_name(dataset) if dataset else None
    if name and known_classes(name) and classes:  # the dataset's classes and order win; check they agree
        match_classes(name, classes, "--classes", exact=fmt == "folder")
        classes = None
    if fmt == "emoset":
        return read_emoset(path, dataset=name or "emoset")
    if fmt == "emotic":
        return read_emotic(path, image_root=image_root, dataset=name or "emotic")
    if fmt == "emotic-mat":
        mat = _mat_in(path) if os.path.isdir(path) else path
        if mat is None:
            raise UserError(f"{path}: no Annotations/Annotations.mat in this folder")
        return read_emotic_mat(mat, image_root=image_root, dataset=name or "emotic")
    if fmt == "emotic-csv":
        return read_tandon_csv(path, image_root=image_root, dataset=name or "emotic", split=split)
    if fmt == "csv":
        return read_csv(path, dataset=name or "custom", classes=classes, root=image_root,
                        ratios=ratios, seed=seed, split=split)
    return read_image_folder(path, dataset=name or "custom", classes=classes, ratios=ratios,
                             seed=seed, split=split)
