"""The manifest of a shard set: ``OUT/manifest.json`` next to ``OUT/{split}-{000000..}.tar``.

It records what was written (counts per class and per split, samples with a person box),
from what (source, options) and with what (tool versions, detector), and a sha256 per
shard, so users and tests can check a set with `verify_shards`. A local shard that sits next to a
manifest is read only when the manifest lists it with its size (`check_listed`): a shard cut short,
replaced or left by a run that never finished is refused, not read.
"""
import hashlib
import os
from typing import Dict, Iterable, List, Optional, Sequence

from ..errors import UserError
from ..io import atomic_write_json, read_json

MANIFEST = "manifest.json"
FORMAT = "uniemox-shards"
VERSION = 1


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_shards(out_dir: str, split: str, counts: Sequence[int]) -> List[Dict]:
    """The manifest entries of one split's shards (file, samples, bytes, sha256)."""
    entries = []
    for i, count in enumerate(counts):
        path = os.path.join(out_dir, shard_name(split, i))
        entries.append({"file": shard_name(split, i), "count": int(count),
                        "bytes": os.path.getsize(path), "sha256": sha256_file(path)})
    return entries


def write_manifest(out_dir: str, manifest: Dict) -> str:
    """Write atomically (temp file + rename): a half-written manifest never exists."""
    path = os.path.join(out_dir, MANIFEST)
    atomic_write_json(path, manifest)
    return path


def load_manifest(root: str) -> Dict:
    path = root if root.endswith(".json") else os.path.join(root, MANIFEST)
    if not os.path.exists(path):
        raise UserError(f"no shard manifest at {path} (write shards with make_shards first)")
    manifest = read_json(path, "shard manifest")
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} manifest")
    return manifest


def shard_urls(root: str, splits: Iterable[str] = ("train",)) -> List[str]:
    """Paths of the shards of the given splits of a shard set, in manifest order.

    Pretraining must never see a test split (the label enters the text): the default
    is the training split only; pass ("train", "val") for the paper's EmoSet setting.
    """
    manifest = load_manifest(root)
    root = os.path.dirname(root) if root.endswith(".json") else root
    urls = []
    for split in splits:
        if split not in manifest["splits"]:
            raise UserError(f"{root}: no split {split!r} (has {', '.join(manifest['splits'])})")
        urls += [os.path.join(root, s["file"]) for s in manifest["splits"][split]["shards"]]
    return check_listed(urls, {root: manifest})


def check_listed(paths: Sequence[str], manifests: Optional[Dict[str, Optional[Dict]]] = None) -> List[str]:
    """``paths`` when every local shard that has a manifest beside it is listed there with the
    size it has on disk (a stat, no reading); else one line naming the first that is not."""
    manifests = {} if manifests is None else manifests
    for path in paths:
        if "://" in path or path.startswith("pipe:") or not os.path.isfile(path):
            continue  # remote shards are checked by their reader; a missing one is reported by the caller
        folder, name = os.path.split(path)
        folder = folder or "."
        if folder not in manifests:
            manifests[folder] = load_manifest(folder) if os.path.isfile(os.path.join(folder, MANIFEST)) else None
        if manifests[folder] is None:
            continue  # shards without a manifest (written by another tool): read as they are
        listed = {s["file"]: s for split in manifests[folder]["splits"].values() for s in split["shards"]}
        if name not in listed:
            raise UserError(f"{path}: not listed in {os.path.join(folder, MANIFEST)} (a shard set is read "
                            "through its manifest; rerun make_shards if it did not finish)")
        size = os.path.getsize(path)
        if size != listed[name]["bytes"]:
            raise UserError(f"{path}: {size} bytes, its manifest says {listed[name]['bytes']} (cut short or "
                            "replaced since it was written; rerun make_shards)")
    return list(paths)


def verify_shards(root: str) -> List[str]:
    """Problems found (missing shard, wrong size or checksum); an empty list means intact."""
    manifest = load_manifest(root)
    problems = []
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            path = os.path.join(root, shard["file"])
            if not os.path.isfile(path):
                problems.append(f"{shard['file']}: missing")
            elif os.path.getsize(path) != shard["bytes"] or sha256_file(path) != shard["sha256"]:
                problems.append(f"{shard['file']}: checksum mismatch")
    return problems
