"""Class-folder datasets: ``ROOT/[train|val|test/]CLASS/**/IMAGE``.

Emo8, FI, HECO, CAER-S (official ``train/`` + ``test/``, or the release's train/val/test split
download) and the release's split downloads of every set have this form. The archives of
Emotion6 and UnBiasedEmo unpack to ``Emotion6/images/CLASS/N.jpg`` (+ ``ground_truth.txt``) and
``UnBiasedEmo/images/CLASS/SUBFOLDER/IMAGE``: pointed at the unpacked folder, the reader steps
into its ``images/`` (see `class_root`), so they never become one class called ``images``.

An optional side-car ``IMAGE_STEM.json`` next to an image holds attributes for the prompt and,
when it has the key, ``person_box`` (null = no person).

Links: a linked folder that points at the folder holding it or above it (the dataset root, a
parent: a cycle) is ignored with a line, and an image file reached a second time through links
is written once; both are counted in the manifest's ``skipped`` (``linked_folder``,
``duplicate_image``).
"""
import logging
import os
from collections import Counter
from typing import List, Optional, Sequence

from ..errors import UserError
from .classes import class_index, known_classes, label_order, match_classes
from .emotion6 import attach_ground_truth
from .sources import (ATTRIBUTE_KEYS, IMAGE_EXTS, SPLIT_DIRS, Record, SourceSet, assign_unique_keys, check_box,
                      load_json, make_key, require_dir, split_records)
from .splits import get_preset

WRAPPER = "images"  # the folder Emotion6's and UnBiasedEmo's archives keep their class folders in
logger = logging.getLogger(__name__)


class LinkGuard:
    """What links may bring into a dataset: no folder twice (cycles), no image twice."""

    def __init__(self, root: str):
        self.root, self.root_real = root, os.path.realpath(root)
        self.skipped: Counter = Counter()
        self.refused = set()

    def folder_ok(self, path: str) -> bool:
        if not os.path.islink(path):
            return True
        real, holder = os.path.realpath(path), os.path.realpath(os.path.dirname(path))
        if holder == real or holder.startswith(real.rstrip(os.sep) + os.sep):
            if path in self.refused:  # said once (class_root looks at the root's folders first)
                return False
            self.refused.add(path)
            logger.warning("ignored %s: a link to %s, which holds it (the images would be read twice)", path, real)
            self.skipped["linked_folder"] += 1
            return False
        return True

    def once_each(self, found: List[tuple], path_of) -> List[tuple]:
        """``found`` with each image file once: where links reach one file several times, the
        entry reached without a link is kept (else the first)."""
        chosen = {}  # real path -> (index into found, reached without a link)
        for i, item in enumerate(found):
            path = path_of(item)
            real = os.path.realpath(path)
            direct = real == os.path.join(self.root_real, os.path.relpath(path, self.root))  # no link on the way
            if real not in chosen or direct and not chosen[real][1]:
                chosen[real] = (i, direct)
        keep = {i for i, _ in chosen.values()}
        dropped = [path_of(item) for i, item in enumerate(found) if i not in keep]
        if dropped:
            logger.warning("skipped %d image(s) reached a second time through links (first: %s)", len(dropped),
                           dropped[0])
            self.skipped["duplicate_image"] += len(dropped)
        return [item for i, item in enumerate(found) if i in keep]


def _subdirs(folder: str, guard: Optional[LinkGuard] = None) -> List[str]:
    guard = guard or LinkGuard(folder)
    return sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d))
                  and guard.folder_ok(os.path.join(folder, d)))


def _images_under(folder: str) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if f.lower().endswith(IMAGE_EXTS) and not f.startswith(".")]
    return found


def class_root(root: str, known: Optional[Sequence[str]] = None, guard: Optional[LinkGuard] = None) -> str:
    """The folder holding the class (or split) folders: ROOT, or the single folder an archive
    wraps them in: ``images/`` always, any other name when the dataset's classes are known and
    that name is not one of them (a one-class custom set is never stepped into)."""
    names = {c.lower() for c in known or ()}
    for _ in range(2):
        subdirs = _subdirs(root, guard)
        if len(subdirs) != 1 or subdirs[0].lower() in SPLIT_DIRS or \
                any(f.lower().endswith(IMAGE_EXTS) for f in os.listdir(root)):
            return root
        if subdirs[0].lower() != WRAPPER and (not names or subdirs[0].lower() in names) or \
                not _subdirs(os.path.join(root, subdirs[0]), guard):  # images right inside: it is a class folder
            return root
        root = os.path.join(root, subdirs[0])
    return root


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
    """Class-per-sub-folder images, with or without train/val/test folders above the classes.
    A dataset with known classes takes them in its label order, spelled as its folders are."""
    require_dir(root)
    known = known_classes(dataset)
    guard = LinkGuard(root)
    top_root = class_root(root, known, guard)
    split_dirs = [d for d in _subdirs(top_root, guard) if d.lower() in SPLIT_DIRS]
    tops = [(SPLIT_DIRS[d.lower()], os.path.join(top_root, d)) for d in split_dirs] or [("", top_root)]
    found = []  # (split, class folder name, group, path)
    for split_name, top in tops:
        for cls in _subdirs(top, guard):
            for path in _images_under(os.path.join(top, cls)):
                rel = os.path.relpath(path, os.path.join(top, cls)).split(os.sep)
                found.append((split_name, cls, f"{cls}/{rel[0]}" if len(rel) > 1 else cls, path))
    found = guard.once_each(found, lambda item: item[3])
    if not found:
        raise UserError(f"no images found in {root} (expected ROOT/[train|val|test/]CLASS/IMAGE)")
    if known:
        names = match_classes(dataset, {c for _, c, _, _ in found}, root)
        order = label_order(dataset)
    else:
        names = list(classes) if classes else sorted({c for _, c, _, _ in found})
        order = "as given by --classes" if classes else "sorted class folder names (torchvision ImageFolder's)"
    by_class = get_preset(dataset).group == "class"
    records = []
    for split_name, cls, sub, path in found:
        idx = class_index(names, cls, path, dataset)
        rec = Record(path=path, split=split_name, label=idx, label_name=names[idx],
                     key=make_key(os.path.relpath(path, top_root)), group=cls if by_class else sub)
        _sidecar(path, rec)
        records.append(rec)
    split_records(records, dataset, ratios, seed, split)
    assign_unique_keys(records)
    source = {"format": "folder", "path": os.path.abspath(root)}
    if top_root != root:
        source["class_root"] = os.path.abspath(top_root)
    if dataset == "emotion6":
        source.update(attach_ground_truth(records, root, top_root))
    return SourceSet(records, names, dataset, source, label_order=order, skipped=dict(guard.skipped))
