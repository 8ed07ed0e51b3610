"""The resumable loader around the shard streams (reader.py): the trainer's data API.

`build_pretrain_loader` gives two-view batches with prompts, `build_labeled_loader` single-view
labelled batches for fine-tuning and evaluation; both return a `ShardLoader` whose
`state_dict()` / `load_state_dict()` carry the exact data position (see reader.py).
"""
import os
import signal
import threading
from collections import Counter
from dataclasses import asdict
from typing import Dict, Iterator, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader

from ..errors import UserError
from .device_views import DeviceViews
from .elastic import reshard
from .plan import Carry
from .reader import MODES, ReaderConfig, ShardStream, ViewTransform, count_classes, expand_urls
from .tarstream import SKIP_KINDS, Retry

# What a job's scheduler sends before it kills the job (SLURM, Kubernetes, `sbatch --signal=USR1@N`):
# the training run acts on them (uniemox.train.preemption), its DataLoader workers leave them to it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def leave_stop_signals_to_parent(worker_id: int) -> None:
    """A DataLoader worker's init: the job's stop signals reach every process of the job, and a
    worker that died of one (PyTorch's worker handler ends it on a SIGTERM from anyone but its
    parent) would fail the parent's next batch while it saves. Here SIGUSR1 is ignored, and
    SIGTERM ends the worker only when its parent sends it (the parent's shutdown, or its exit's
    terminate()): a thread waits for it with the sender's pid, the signal blocked elsewhere."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_end_on_sigterm_from, args=(os.getppid(),), name="uniemox-sigterm", daemon=True).start()


def _end_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


class ShardLoader:
    """Batches from WebDataset shards, resumable; iterate it once per epoch.

    pretrain mode batches: scene [B,3,S,S] uint8, person [B,3,S,S] uint8 (unnormalised:
    `uniemox.data.transforms.model_input` normalises them on the device), label int64 [B],
    text list[str] (docs/method.md#pretraining prompt), key list[str], has_person bool [B].
    train/eval mode batches: image [B,3,S,S] uint8 (normalised on the device, as above), label,
    key (and targets [B,C] with num_classes); ``view_transform`` (PIL image, random.Random) ->
    uint8 tensor replaces the reader's own single-view transform (fine-tuning passes its
    RandAugment recipe).

    A finite loader ends each iteration at the end of the data epoch; a resampled one
    never ends unless `epoch_batches` is set, which also caps finite epochs (use it to give
    every rank the same number of steps). `state_dict()` after a batch, `load_state_dict()`
    before iterating: the next batches are those an uninterrupted run would have seen.
    """

    def __init__(self, cfg: ReaderConfig, epoch_batches: Optional[int] = None, pin_memory: bool = False,
                 prefetch_factor: int = 2, start_state: Optional[Dict] = None,
                 view_transform: Optional[ViewTransform] = None):
        if cfg.mode not in MODES:
            raise UserError(f"unknown reader mode {cfg.mode!r} (choose from {', '.join(MODES)})")
        if cfg.batch_size < 1 or cfg.num_workers < 0 or not 0 <= cfg.rank < cfg.world_size:
            raise UserError(f"bad reader settings: batch_size={cfg.batch_size}, num_workers={cfg.num_workers}, "
                            f"rank={cfg.rank}, world_size={cfg.world_size}")
        slots = cfg.world_size * cfg.streams
        if not cfg.resampled and len(cfg.urls) < slots:
            raise UserError(f"{len(cfg.urls)} shard(s) for {cfg.world_size} rank(s) x {cfg.streams} worker(s): "
                            f"every worker needs a shard; write smaller shards (--shard-size), use fewer "
                            f"workers, or resampled=True")
        if cfg.decode_device is not None:
            if cfg.mode != "pretrain" or cfg.decode_device.split(":")[0] not in ("cpu", "cuda"):
                raise UserError(f"decode_device={cfg.decode_device!r}: pretraining decodes on 'cpu' or 'cuda'")
            if cfg.decode_device.startswith("cuda") and not torch.cuda.is_available():
                raise UserError(f"decode_device={cfg.decode_device!r}: no CUDA device is visible")
        if view_transform is not None and cfg.mode == "pretrain":
            raise UserError("view_transform is for train/eval mode; pretraining has its two-view transform")
        self.cfg, self.epoch_batches, self.view_transform = cfg, epoch_batches, view_transform
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self._it = None
        # decode_device: the views are cut here, after the workers (device_views.py); what fails there is counted here
        self.device_views = DeviceViews(cfg.image_size, cfg.decode_device) if cfg.decode_device else None
        self.device_skips: Counter = Counter()
        self.carry: Carry = {}  # epochs under way at an elastic resume: their remaining pieces (plan.py)
        self.set_epoch(0)
        if start_state is not None:
            self.load_state_dict(start_state)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (finite mode: also the shard order's epoch)."""
        old = getattr(self, "workers", None)
        self.epoch, self.batches_in_epoch, self.next_worker, self._it = epoch, 0, 0, None
        self.workers = [{"epoch": epoch, "consumed": 0, "read": [], "skips": (old[w]["skips"] if old else {})}
                        for w in range(self.cfg.streams)]

    @property
    def skip_counts(self) -> Dict[str, int]:
        """Damaged items skipped so far, by kind (SKIP_KINDS), over all workers and resumes."""
        total = Counter({k: 0 for k in SKIP_KINDS})
        for w in self.workers:
            total.update(w["skips"])
        total.update(self.device_skips)
        return dict(total)

    @property
    def skipped(self) -> int:
        """Damaged items skipped so far, all kinds together (a scalar to log)."""
        return sum(self.skip_counts.values())

    def endless(self) -> Iterator[Dict]:
        """Batches without end (the trainer counts steps, not epochs). The workers stay alive:
        each moves on to its next epoch by itself, as in resampled mode, instead of the whole
        loader restarting its processes at every epoch (seconds of CPU each time). Positions
        stay exact per worker, so `state_dict()` / `load_state_dict()` resume as before."""
        for item in self._loader(endless=True):
            self._advance(item.pop("_meta"))
            self.epoch = min(w["epoch"] for w in self.workers)  # the epoch every worker has reached
            yield self._views(item)

    def _loader(self, endless: bool = False) -> DataLoader:
        stream = ShardStream(self.cfg, [dict(w) for w in self.workers], self.next_worker, endless,
                             self.view_transform, self.carry)
        return DataLoader(stream, batch_size=None, num_workers=self.cfg.num_workers, pin_memory=self.pin_memory,
                          prefetch_factor=self.prefetch_factor if self.cfg.num_workers else None,
                          worker_init_fn=leave_stop_signals_to_parent)

    def _views(self, batch: Dict) -> Dict:
        return self.device_views(batch, self.device_skips) if self.device_views else batch

    def _advance(self, meta: Dict) -> None:
        """Record where the worker that made this item stands, and who is next."""
        self.workers[meta["worker"]] = {k: meta[k] for k in ("epoch", "consumed", "read", "skips")}
        self.next_worker = (meta["worker"] + 1) % self.cfg.streams
        if self.carry and min(self.carry) < meta["epoch"]:  # carried epochs every worker has left
            low = min(w["epoch"] for w in self.workers)
            self.carry = {e: pieces for e, pieces in self.carry.items() if e >= low}

    def __iter__(self) -> Iterator[Dict]:
        while self.epoch_batches is None or self.batches_in_epoch < self.epoch_batches:
            if self._it is None:
                self._it = iter(self._loader())
            try:
                item = next(self._it)
            except StopIteration:  # finite mode: the data epoch is over
                if self.batches_in_epoch == 0:
                    raise UserError(f"no batch of {self.cfg.batch_size} could be made from "
                                    f"{len(self.cfg.urls)} shard(s); skipped: {self.skip_counts}") from None
                self.set_epoch(self.epoch + 1)
                return
            meta = item.pop("_meta")
            self._advance(meta)
            if meta["final"]:
                continue
            self.batches_in_epoch += 1
            yield self._views(item)
        if self.cfg.resampled:  # the stream goes on; only the loader's epoch count moves
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0
        else:
            self.set_epoch(self.epoch + 1)

    def state_dict(self) -> Dict:
        return {"version": 1, "config": self._fingerprint(), "epoch": self.epoch,
                "batches_in_epoch": self.batches_in_epoch, "next_worker": self.next_worker,
                "workers": [dict(w, skips=dict(w["skips"]), read=list(w.get("read", []))) for w in self.workers],
                "carry": {e: [list(p) for p in pieces] for e, pieces in self.carry.items()},
                "device_skips": dict(self.device_skips)}

    def load_state_dict(self, state: Dict) -> None:
        if state.get("version") != 1 or "workers" not in state:
            raise UserError("not a reader state (expected the dict of ShardLoader.state_dict())")
        mismatch = {k: (v, self._fingerprint().get(k)) for k, v in state["config"].items()
                    if self._fingerprint().get(k) != v}
        if mismatch:
            raise UserError("the data position was saved with other reader settings, an exact resume is "
                            "impossible: " + ", ".join(f"{k} was {a} now {b}" for k, (a, b) in mismatch.items()))
        self.epoch, self.batches_in_epoch = state["epoch"], state["batches_in_epoch"]
        self.next_worker, self.workers = state["next_worker"], [dict(w) for w in state["workers"]]
        self.carry = {int(e): pieces for e, pieces in (state.get("carry") or {}).items()}
        self.device_skips = Counter(state.get("device_skips") or {})
        self._it = None

    def load_elastic(self, states: Sequence[Dict]) -> None:
        """Continue from the states of every rank of a run with another world size or worker
        count (in rank order): each sample of the epochs under way once (elastic.py)."""
        state = reshard(self.cfg, list(states))
        self.load_state_dict(dict(state, version=1, config=self._fingerprint()))

    def _fingerprint(self) -> Dict:
        cfg = asdict(self.cfg)
        cfg["urls"] = len(cfg["urls"])  # the shard count; paths may move between machines
        return {k: cfg[k] for k in ("urls", "batch_size", "num_workers", "seed", "resampled", "rank",
                                    "world_size", "shuffle_buffer", "drop_last", "mode", "image_size")}


def build_pretrain_loader(urls: Union[str, Sequence[str]], batch_size: int, num_workers: int = 2,
                          image_size: int = 224, shuffle_buffer: int = 1000, seed: int = 0,
                          resampled: bool = False, rank: int = 0, world_size: int = 1,
                          start_state: Optional[Dict] = None, epoch_batches: Optional[int] = None,
                          drop_last: bool = True, pin_memory: bool = False,
                          person_view: bool = True, class_count: Optional[int] = None,
                          retry: Retry = Retry(), decode_device: Optional[str] = None) -> ShardLoader:
    """The pretraining reader (two views + prompt); see `ShardLoader` for the batch layout.
    ``person_view=False``: batches without "person" (a caller that uses the scene view only
    saves its crop and resize). ``class_count``: samples labelled outside it are skipped and
    counted (default: the classes of the shards' manifest, where there is one). ``retry``: how
    remote shards are waited for and retried. ``decode_device`` ("cuda", "cpu"): the workers
    only draw the crops; each batch is decoded and its views cut on that device in this process
    (device_views.py; the batches' views are then on that device)."""
    urls = expand_urls(urls)
    class_count = class_count if class_count is not None else count_classes(urls)
    cfg = ReaderConfig(tuple(urls), batch_size, num_workers, image_size, shuffle_buffer, seed,
                       resampled, rank, world_size, drop_last, "pretrain", person_view=person_view,
                       class_count=class_count, retry=retry, decode_device=decode_device)
    return ShardLoader(cfg, epoch_batches, pin_memory, start_state=start_state)


def build_labeled_loader(urls: Union[str, Sequence[str]], batch_size: int, num_workers: int = 2,
                         image_size: int = 224, train: bool = False, shuffle_buffer: int = 1000,
                         seed: int = 0, rank: int = 0, world_size: int = 1,
                         num_classes: Optional[int] = None, start_state: Optional[Dict] = None,
                         view_transform: Optional[ViewTransform] = None, pin_memory: bool = False,
                         class_count: Optional[int] = None, retry: Retry = Retry()) -> ShardLoader:
    """Single-view labelled batches for fine-tuning (train=True: random-resized crop + flip, or
    ``view_transform``; shuffled, full batches) or evaluation (resize + centre crop, file order,
    every sample once; workers are capped at the shards per rank). ``class_count``: as in
    `build_pretrain_loader` (``num_classes``, where given, is the class count)."""
    urls = expand_urls(urls)
    class_count = class_count or num_classes or count_classes(urls)
    if not train:
        if len(urls) < world_size:
            raise UserError(f"{len(urls)} shard(s) for {world_size} ranks: every rank needs a shard")
        num_workers = min(num_workers, len(urls) // world_size)
    cfg = ReaderConfig(tuple(urls), batch_size, num_workers, image_size, shuffle_buffer, seed, False, rank,
                       world_size, train, "train" if train else "eval", num_classes, class_count=class_count,
                       retry=retry)
    return ShardLoader(cfg, pin_memory=pin_memory, start_state=start_state, view_transform=view_transform)
