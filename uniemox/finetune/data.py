"""What a fine-tuning run reads: a shard set (or a dataset converted into one), its splits,
and the label fraction.

* ``data.path`` with a ``manifest.json`` is used as it is; any other dataset that
  make_shards reads (image folder ``ROOT/[split/]CLASS/*.jpg``, EmoSet, EMOTIC JSON, CSV) is
  converted once into ``RUN_DIR/data/shards`` (no person detection: fine-tuning is single-view).
* ``--label-fraction f`` keeps, per class (the sample's ``label``; the first one for
  multi-label data), ``max(1, round(n_c x f))`` training samples: the class's keys sorted,
  shuffled with ``random.Random(f"{seed}:{class}")``, the first ones kept. The kept samples
  are copied byte for byte into ``RUN_DIR/data/fraction-...`` shards with their own manifest,
  so the reader, epoch counting and resume work unchanged. Val and test are untouched.
"""
import json
import math
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch.distributed as dist

from uniemox.data.manifest import FORMAT, MANIFEST, VERSION, describe_shards, load_manifest, shard_urls, write_manifest
from uniemox.data.tarstream import RateLimitedLog, iter_shards
from uniemox.errors import UserError
from uniemox.io import replace_dir


@dataclass
class FinetuneData:
    root: str
    classes: List[str]
    multi_label: bool
    train: List[str]
    val: Optional[List[str]]
    test: Optional[List[str]]
    train_count: int
    fraction: Optional[Dict] = None


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _has_manifest(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST))


def convert_dataset(path: str, out_dir: str, dataset: Optional[str], max_side: int, min_train_shards: int,
                    rank: int) -> str:
    """Shards of a dataset folder/file in ``out_dir`` (written once, by rank 0; every rank waits)."""
    if rank == 0 and not _has_manifest(out_dir):
        from uniemox.data.catalog import open_source
        from uniemox.data.writer import write_shards

        source = open_source(path, dataset=dataset)
        n_train = sum(r.split == "train" for r in source.records)
        if not n_train:
            raise UserError(f"{path}: no training images (need a train/ folder or an unsplit class folder)")
        shard_size = max(1, min(1000, n_train // max(1, min_train_shards)))
        small = len(source.records) < 2000  # worker processes cost more than they save
        write_shards(source, out_dir, shard_size=shard_size, max_side=max_side, detector="none",
                     num_workers=0 if small else None, progress=True)
    _barrier()
    return out_dir


def _label_of(sample: Dict) -> int:
    meta = json.loads(sample["json"])
    return int(meta["label"])


def select_fraction(urls: Sequence[str], fraction: float, seed: int) -> Dict[int, List[str]]:
    """Kept keys per class (see module doc)."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--label-fraction must be in (0, 1], got {fraction}")
    per_class: Dict[int, List[str]] = defaultdict(list)
    counters: Counter = Counter()
    for sample in iter_shards(urls, counters, RateLimitedLog()):
        if "json" in sample:
            try:
                per_class[_label_of(sample)].append(sample["__key__"])
            except (ValueError, KeyError):
                continue  # the reader skips and counts it as well
    kept = {}
    for label in sorted(per_class):
        keys = sorted(per_class[label])
        random.Random(f"{seed}:{label}").shuffle(keys)
        kept[label] = sorted(keys[:max(1, int(round(len(keys) * fraction)))])
    return kept


def write_fraction(urls: Sequence[str], source_manifest: Dict, fraction: float, seed: int, out_dir: str,
                   rank: int) -> str:
    """The kept training samples as shards with a manifest in ``out_dir`` (rank 0 writes, every
    rank waits)."""
    if rank == 0 and not _has_manifest(out_dir):
        import webdataset as wds

        kept = select_fraction(urls, fraction, seed)
        keys = {k for ks in kept.values() for k in ks}
        n = len(keys)
        num_shards = max(1, min(n, len(urls)))
        per_shard = math.ceil(n / num_shards)
        tmp = f"{out_dir}.tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        writer, written, index = None, 0, 0
        for sample in iter_shards(urls, Counter(), RateLimitedLog()):
            if sample["__key__"] not in keys:
                continue
            if writer is None or written == per_shard:
                if writer is not None:
                    writer.close()
                    index += 1
                writer, written = wds.TarWriter(os.path.join(tmp, f"train-{index:06d}.tar"), mtime=0.0), 0
            writer.write({k: v for k, v in sample.items()})
            written += 1
        if writer is not None:
            writer.close()
        counts = [min(per_shard, n - i * per_shard) for i in range(index + 1)]
        classes = source_manifest["classes"]
        manifest = {"format": FORMAT, "version": VERSION, "dataset": source_manifest.get("dataset"),
                    "classes": classes, "multi_label": source_manifest.get("multi_label", False),
                    "source": {"label_fraction_of": list(urls), "fraction": fraction, "seed": seed},
                    "total": n, "splits": {"train": {
                        "count": n, "per_class": {classes[c]: len(kept.get(c, [])) for c in range(len(classes))},
                        "shards": describe_shards(tmp, "train", counts)}}}
        write_manifest(tmp, manifest)
        replace_dir(tmp, out_dir)
    _barrier()
    return out_dir


def prepare_data(path: Optional[str], dataset: Optional[str], run_dir: str, train_split: str,
                 val_split: Optional[str], test_split: Optional[str], label_fraction: float, fraction_seed: int,
                 max_side: int, min_train_shards: int, rank: int, sample_root: Optional[str] = None) -> FinetuneData:
    """Resolve ``data.*`` into shard lists; ``sample_root`` stands in when no path is given."""
    root = sample_root if path is None else path
    if not os.path.exists(root):
        raise UserError(f"data.path not found: {root}")
    if not (os.path.isdir(root) and _has_manifest(root)):
        root = convert_dataset(root, os.path.join(run_dir, "data", "shards"), dataset, max_side,
                               min_train_shards, rank)
    manifest = load_manifest(root)
    splits = manifest["splits"]

    def urls(split: Optional[str], required: bool) -> Optional[List[str]]:
        if split is None or (split not in splits and not required):
            return None
        return shard_urls(root, (split,))

    train = urls(train_split, True)
    count = splits[train_split]["count"]
    fraction = None
    if label_fraction < 1.0:
        out = os.path.join(run_dir, "data", f"fraction-{label_fraction:g}-seed{fraction_seed}")
        sub = write_fraction(train, manifest, label_fraction, fraction_seed, out, rank)
        sub_manifest = load_manifest(sub)
        train, count = shard_urls(sub, ("train",)), sub_manifest["splits"]["train"]["count"]
        fraction = {"fraction": label_fraction, "seed": fraction_seed, "kept": count,
                    "of": splits[train_split]["count"], "per_class": sub_manifest["splits"]["train"]["per_class"]}
    return FinetuneData(root, list(manifest["classes"]), bool(manifest.get("multi_label")), train,
                        urls(val_split, False), urls(test_split, False), count, fraction)
