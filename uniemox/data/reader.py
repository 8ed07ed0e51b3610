"""The WebDataset reader's worker side: one deterministic stream per DataLoader worker.

Each DataLoader worker runs one `ShardStream` (the loader around it is loader.py):

    shards of this epoch, rank and worker -> raw tar samples -> seeded shuffle buffer
    -> skip the samples already consumed (no decoding) -> decode + augment -> batch

* split by node and worker (plan.py): the epoch's shard order (a permutation seeded by
  (seed, epoch)) is cut as ``order[rank::world_size][worker::num_workers]``;
  ``resampled=True`` instead draws ceil(n / (world_size x workers)) shards with
  replacement per worker and epoch, and never ends (multi-epoch large runs).
* every random draw is seeded by (seed, rank, worker, epoch, sample index), so a stream
  is a pure function of its position: the loader's `state_dict()` holds, per worker,
  (epoch, raw samples consumed, skip counters) and the worker that is next in the
  DataLoader's round robin; `load_state_dict()` restarts every worker at its position
  (skipping raw bytes, not decoding) and rotates the workers so the next batch comes
  from the right one. The batches after a resume are those of an uninterrupted run,
  given the same urls, seed, batch size, world size and worker count. On another world size
  or worker count, `ShardLoader.load_elastic()` hands out what the epochs under way had left
  (elastic.py), each sample once.
* the epoch's shards of a worker are pieces (plan.py): a shard less the positions already
  consumed under another layout; every sample carries its ``epoch``.
* damaged data (corrupt image, bad JSON, truncated tar) is skipped and counted
  (`loader.skipped`), logged at most every 10 s per worker.
"""
import functools
import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import UserError
from .device_views import view_draws
from .images import decode_image, decode_image_tensor, skip_kind
from .prompts import build_prompt
from .manifest import MANIFEST
from .remote import parent, read_text
from .sample_meta import check_meta
from .plan import Carry, Piece, epoch_pieces, sample_rng, shuffle_rng
from .tarstream import IMAGE_KEYS, RateLimitedLog, Retry, iter_pieces, seeded_shuffle
from .transforms import EvalTransform, TwoViewTransform, ViewAugment

MODES = ("pretrain", "train", "eval")
ViewTransform = Callable[[Image.Image, random.Random], torch.Tensor]  # a train/eval mode view (takes PIL)


@dataclass(frozen=True)
class ReaderConfig:
    urls: Tuple[str, ...]
    batch_size: int
    num_workers: int = 2
    image_size: int = 224
    shuffle_buffer: int = 1000
    seed: int = 0
    resampled: bool = False
    rank: int = 0
    world_size: int = 1
    drop_last: bool = True
    mode: str = "pretrain"
    num_classes: Optional[int] = None  # multi-label targets (EMOTIC) in train/eval mode
    person_view: bool = True  # pretrain mode: False leaves the person view out (teacher training)
    class_count: Optional[int] = None  # labels at or above it are skipped (None: not known)
    retry: Retry = Retry()  # remote shards: time-out and bounded retries (tarstream.Retry)
    decode_device: Optional[str] = None  # pretrain mode: decode and cut the views there (device_views.py)

    @property
    def streams(self) -> int:
        return max(1, self.num_workers)


def expand_urls(urls: Union[str, Sequence[str]]) -> List[str]:
    """Shard paths from: a brace pattern ("d/train-{000000..000009}.tar"), several joined by
    "::", a list of those, or a shard-set folder (its manifest's TRAIN split only: pretraining
    must never read a test split; use `shard_urls(folder, splits)` for others)."""
    from .manifest import MANIFEST, check_listed, shard_urls

    items = [urls] if isinstance(urls, str) else list(urls)
    out = []
    for item in items:
        for part in str(item).split("::"):
            if os.path.isdir(part):
                if not os.path.isfile(os.path.join(part, MANIFEST)):
                    raise UserError(f"{part} is a folder without {MANIFEST}: pass shard files")
                out += shard_urls(part, ("train",))
            else:
                out += check_listed(list(braceexpand(part)))
    if not out:
        raise UserError("no shard given")
    for url in out:
        if "://" not in url and not url.startswith("pipe:") and not os.path.isfile(url):
            raise UserError(f"shard not found: {url}")
    return out


def _manifest_near(url: str, cache: Dict[str, Optional[Dict]]) -> Optional[Dict]:
    """The manifest in a shard's folder (local or remote), or None where there is none."""
    folder = parent(url)
    if folder not in cache:
        try:
            cache[folder] = json.loads(read_text(f"{folder}/{MANIFEST}"))
        except (OSError, ValueError, UserError):  # no manifest there (or not readable): not counted
            cache[folder] = None
    return cache[folder]


def epoch_size(urls: Union[str, Sequence[str]]) -> Optional[int]:
    """Samples in one pass over `urls` (any form `expand_urls` takes), counted from the
    manifests next to the shards (local or remote); None when a shard has no manifest entry."""
    manifests: Dict[str, Optional[Dict]] = {}
    total = 0
    for url in expand_urls(urls):
        manifest = _manifest_near(url, manifests)
        name = url.rsplit("/", 1)[-1]
        counts = {s["file"]: s["count"] for split in (manifest or {}).get("splits", {}).values()
                  for s in split["shards"]}
        if name not in counts:
            return None
        total += counts[name]
    return total


def count_classes(urls: Sequence[str]) -> Optional[int]:
    """The class count of the manifests next to ``urls`` (None where a shard has none, or the
    manifests disagree)."""
    manifests: Dict[str, Optional[Dict]] = {}
    counts = set()
    for url in urls:
        manifest = _manifest_near(url, manifests)
        if manifest is None:
            return None
        counts.add(len(manifest.get("classes") or ()))
    return counts.pop() if len(counts) == 1 and 0 not in counts else None


def prompt_of(meta: Dict) -> str:
    """docs/method.md#pretraining text; a multi-label sample names all its emotions ("a, b and c")."""
    names = meta.get("label_names") or [meta["label_name"]]
    emotion = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return build_prompt(str(emotion), meta.get("attributes") or {})


class ShardStream(IterableDataset):
    """One deterministic stream per DataLoader worker (see module doc)."""

    def __init__(self, cfg: ReaderConfig, start: List[Dict], rotation: int, endless: bool = False,
                 view_transform: Optional[ViewTransform] = None, carry: Optional[Carry] = None):
        super().__init__()
        self.cfg, self.start, self.rotation, self.endless, self.carry = cfg, start, rotation, endless, carry
        self.two_view = TwoViewTransform(cfg.image_size)
        self.single = view_transform or (ViewAugment(cfg.image_size) if cfg.mode == "train"
                                         else EvalTransform(cfg.image_size))
        # the reader's own augmentations crop tensors; the evaluation view and a caller's transform take PIL;
        # with a decode device, the workers read the header only and draw the crops
        self.deferred = cfg.mode == "pretrain" and cfg.decode_device is not None
        self.decode = (functools.partial(decode_image_tensor, defer=self.deferred)
                       if cfg.mode == "pretrain" or isinstance(self.single, ViewAugment) else decode_image)

    def pieces(self, epoch: int, worker: int) -> List[Piece]:
        return epoch_pieces(self.cfg, epoch, worker, self.carry)

    def make(self, sample: Dict, rng: random.Random, counters: Counter, warn, epoch: int = 0) -> Optional[Dict]:
        key = sample.get("__key__", "?")
        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        if image_key is None or "json" not in sample:
            counters["incomplete_sample"] += 1
            warn(f"sample {key} lacks an image or its json")
            return None
        try:
            meta = json.loads(sample["json"])
            problem = check_meta(meta, self.cfg.class_count)
            if problem is None and self.cfg.mode == "pretrain":
                text = prompt_of(meta)
        except Exception as e:
            problem = f"bad_json: undecodable ({type(e).__name__}: {e})"
        if problem is not None:
            kind, _, why = problem.partition(": ")
            counters[kind] += 1
            warn(f"sample {key}: {kind.replace('_', ' ')} ({why})")
            return None
        label = meta["label"]
        try:
            img = self.decode(sample[image_key])
        except Exception as e:
            kind = skip_kind(e)
            counters[kind] += 1
            warn(f"sample {key}: {kind.replace('_', ' ')} ({type(e).__name__}: {e})")
            return None
        out = {"label": label, "key": key, "epoch": epoch}
        if self.deferred:  # the views are cut after the batch is decoded (device_views.py)
            box = meta.get("person_box")
            scene, person = self.two_view.draw(img.width, img.height, box, rng, self.cfg.person_view)
            out.update(encoded=img.data, text=text, has_person=box is not None, **view_draws("scene", scene))
            if person is not None:
                out.update(view_draws("person", person))
        elif self.cfg.mode == "pretrain":
            box = meta.get("person_box")
            if self.cfg.person_view:
                out["scene"], out["person"] = self.two_view(img, box, rng)
            else:
                out["scene"] = self.two_view.scene(img, rng)
            out["text"], out["has_person"] = text, box is not None
        else:
            out["image"] = self.single(img, rng)
            if self.cfg.num_classes:
                target = torch.zeros(self.cfg.num_classes)
                target[meta.get("labels") or [label]] = 1.0
                out["targets"] = target
        return out

    @staticmethod
    def collate(items: List[Dict], meta: Dict) -> Dict:
        batch = {}
        for name, first in items[0].items():
            values = [it[name] for it in items]
            if isinstance(first, torch.Tensor):
                # numpy's stack is one plain copy: torch.stack would run OpenMP threads, which spin
                # against the trainer's compute when the reader runs in-process
                batch[name] = torch.from_numpy(np.stack([v.numpy() for v in values]))
            elif isinstance(first, (bool, int)):
                batch[name] = torch.tensor(values, dtype=torch.bool if isinstance(first, bool) else torch.int64)
            else:
                batch[name] = values
        batch["_meta"] = meta
        return batch

    def __iter__(self) -> Iterator[Dict]:
        cfg, info = self.cfg, get_worker_info()
        worker = ((info.id if info else 0) + self.rotation) % cfg.streams
        state = self.start[worker]
        epoch, skip, counters = state["epoch"], state["consumed"], Counter(state["skips"])
        warn = RateLimitedLog()

        def meta(consumed: int, final: bool = False) -> Dict:
            return {"worker": worker, "epoch": epoch, "consumed": consumed, "read": list(read),
                    "skips": dict(counters), "final": final}

        batch: List[Dict] = []
        while True:
            # damaged shards met while fast-forwarding to a resume position were counted before the
            # resume (the counters are restored): shard events are kept only from that position on
            shard_events: Counter = Counter()
            read: List[int] = []  # samples given per piece: where the epoch stands, for elastic.py
            pieces = self.pieces(epoch, worker)
            raw = iter_pieces(cfg.urls, pieces, read, shard_events, warn, cfg.retry)
            if cfg.mode != "eval":
                raw = seeded_shuffle(raw, cfg.shuffle_buffer, shuffle_rng(cfg, epoch, worker))
            index, made = -1, 0
            for index, sample in enumerate(raw):
                if index >= skip:
                    counters.update(shard_events)
                shard_events.clear()
                if index < skip:
                    continue  # already consumed before the resume: no decoding
                out = self.make(sample, sample_rng(cfg, epoch, worker, index), counters, warn, epoch)
                if out is None:
                    continue
                made += 1
                batch.append(out)
                if len(batch) == cfg.batch_size:
                    yield self.collate(batch, meta(index + 1))
                    batch = []
            if index + 1 >= skip:
                counters.update(shard_events)  # met after the last sample of the pass
            if not (cfg.resampled or self.endless):
                if batch and not cfg.drop_last:
                    yield self.collate(batch, meta(index + 1))
                yield {"_meta": meta(index + 1, final=True)}  # last counters; not a batch
                return
            if made == 0 and skip == 0 and pieces and not (self.carry and epoch in self.carry):
                raise UserError(f"worker {worker}: no readable sample in a whole pass over its shards")
            epoch, skip = epoch + 1, 0
