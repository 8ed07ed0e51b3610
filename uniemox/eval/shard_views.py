"""Evaluation views of labelled shards with the person view from the stored box: for scoring a
two-view model (zero-shot) on a split. Single process, file order, every sample once.

Batches: scene / person [B, 3, S, S] (evaluation transform; person = the box's crop, the
scene where the sample has no box), has_person bool [B], label [B], targets [B, C] with
num_classes, key list[str]. Damaged samples are skipped and counted as the reader does.
"""
import json
from collections import Counter
from typing import Dict, Iterator, List, Optional, Sequence

import torch

from uniemox.data.images import decode_image, skip_kind
from uniemox.data.sample_meta import check_meta
from uniemox.data.tarstream import IMAGE_KEYS, RateLimitedLog, iter_shards
from uniemox.data.transforms import EvalTransform, crop_person


def iter_view_batches(urls: Sequence[str], image_size: int, batch_size: int,
                      num_classes: Optional[int] = None, counters: Optional[Counter] = None,
                      class_count: Optional[int] = None) -> Iterator[Dict]:
    transform = EvalTransform(image_size)
    counters = Counter() if counters is None else counters
    warn = RateLimitedLog()
    items: List[Dict] = []
    for sample in iter_shards(urls, counters, warn):
        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        try:
            meta = json.loads(sample["json"])
            problem = check_meta(meta, class_count or num_classes)
        except Exception as e:  # missing or undecodable json
            problem = f"bad_json: {type(e).__name__}: {e}"
        if problem is None:
            try:
                img, label = decode_image(sample[image_key]), meta["label"]
            except Exception as e:  # corrupt, oversized or missing image
                problem = f"{skip_kind(e)}: {type(e).__name__}: {e}"
        if problem is not None:
            kind, _, why = problem.partition(": ")
            counters[kind] += 1
            warn(f"sample {sample.get('__key__')}: {kind.replace('_', ' ')} ({why})")
            continue
        box = meta.get("person_box")
        scene = transform(img)
        item = {"scene": scene, "person": transform(crop_person(img, box)) if box else scene,
                "has_person": box is not None, "label": label, "key": sample["__key__"]}
        if num_classes:
            item["targets"] = torch.zeros(num_classes)
            item["targets"][meta.get("labels") or [label]] = 1.0
        items.append(item)
        if len(items) == batch_size:
            yield _collate(items)
            items = []
    if items:
        yield _collate(items)


def _collate(items: List[Dict]) -> Dict:
    out = {k: torch.stack([it[k] for it in items]) for k in ("scene", "person") if k in items[0]}
    out["has_person"] = torch.tensor([it["has_person"] for it in items])
    out["label"] = torch.tensor([it["label"] for it in items], dtype=torch.int64)
    out["key"] = [it["key"] for it in items]
    if "targets" in items[0]:
        out["targets"] = torch.stack([it["targets"] for it in items])
    return out
