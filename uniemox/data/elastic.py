"""The data position on another layout: a run saved by W ranks x N workers resumes on W' x N'.

Every rank's loader state (loader.py) says, per worker, its epoch, how many shuffled samples it
had consumed (``consumed``) and how many samples it had read from each of its pieces (``read``).
The shuffle buffer is a pure function of its generator and the *number* of samples read, so
replaying it over sample indices (no data read) gives exactly which of the read samples were
consumed: the first ``consumed`` indices it gives. Mapped back to shard positions they are the
pieces' new excluded positions. What each epoch under way had left, over all old ranks and
workers, is carried (plan.py) and cut anew among the new ranks and workers; every new worker
starts at the lowest epoch any old worker was in. So within each epoch every sample is consumed
exactly once, across the resume. The carried epochs' batches are new draws (other workers,
other shuffles); epochs after them are plain epochs of the new layout.

A resampled stream (``data.resampled``) has no epoch to complete: its new workers draw fresh
shards from the epoch after the furthest old worker; what is guaranteed is the sampling law
(every draw uniform over the shards), not that any sample is seen once.
"""
import dataclasses
from collections import Counter
from itertools import islice
from typing import Dict, List, Sequence

from ..errors import UserError
from .plan import Carry, Piece, epoch_pieces, shuffle_rng
from .tarstream import seeded_shuffle

# reader settings that must be what they were for the remainder to mean the same samples
SAME_DATA = ("urls", "seed", "resampled", "shuffle_buffer", "mode")


def _kept_positions(excluded: Sequence[int], count: int) -> List[int]:
    """The first ``count`` positions of a shard that are not excluded, in file order."""
    skip, out, position = set(excluded), [], 0
    while len(out) < count:
        if position not in skip:
            out.append(position)
        position += 1
    return out


def consumed_indices(cfg, epoch: int, worker: int, read: int, consumed: int) -> set:
    """Indices (in read order) of the samples a worker's shuffle had given by its ``consumed``-th
    output, having read ``read`` samples: replayed on indices, nothing is read."""
    if cfg.mode == "eval" or cfg.shuffle_buffer <= 1:
        return set(range(consumed))
    return set(islice(seeded_shuffle(iter(range(read)), cfg.shuffle_buffer, shuffle_rng(cfg, epoch, worker)),
                      consumed))


def worker_remainder(cfg, pieces: List[Piece], state: Dict) -> List[Piece]:
    """What is left of a worker's pieces in the epoch it is in: consumed positions excluded,
    pieces read to the end and wholly consumed dropped, pieces not begun kept as they were."""
    read = state["read"]
    done = consumed_indices(cfg, state["epoch"], state["worker"], sum(read), state["consumed"])
    left, first = [], 0
    for i, (shard, excluded) in enumerate(pieces):
        if i >= len(read):
            left.append([shard, list(excluded)])
            continue
        positions = _kept_positions(excluded, read[i])
        taken = {p for j, p in enumerate(positions) if first + j in done}
        first += read[i]
        finished = i < len(read) - 1  # a later piece was begun: this one was read to its end
        if finished and len(taken) == read[i]:
            continue
        left.append([shard, sorted(set(excluded) | taken)])
    return left


def _old_layout(cfg, states: List[Dict]):
    """The ReaderConfig of each old rank, checked against this run's for the same data."""
    fingerprint = dataclasses.asdict(cfg)
    fingerprint["urls"] = len(cfg.urls)
    olds = []
    for rank, state in enumerate(states):
        if state.get("version") != 1 or "workers" not in state:
            raise UserError("not a reader state (expected the dicts of ShardLoader.state_dict())")
        saved = state["config"]
        differ = [f"{k} was {saved.get(k)} now {fingerprint[k]}" for k in SAME_DATA if saved.get(k) != fingerprint[k]]
        if differ:
            raise UserError("the data position was saved over other data, it cannot be carried to this run: "
                            + ", ".join(differ))
        if saved["rank"] != rank or saved["world_size"] != len(states):
            raise UserError(f"reader state {rank} of {len(states)} was saved by rank {saved['rank']} of "
                            f"{saved['world_size']}")
        if any("read" not in w for w in state["workers"]):
            raise UserError("the checkpoint's data position predates elastic resume (no per-shard read "
                            "counts): resume it on its own world size and worker count")
        olds.append(dataclasses.replace(cfg, rank=rank, world_size=len(states), num_workers=saved["num_workers"]))
    return olds


def reshard(cfg, states: List[Dict]) -> Dict:
    """The loader state of this run's rank (``cfg``) from every old rank's state (in rank order)."""
    olds = _old_layout(cfg, states)
    carry: Carry = {int(k): v for k, v in (states[0].get("carry") or {}).items()}
    workers = [dict(w, worker=i) for state in states for i, w in enumerate(state["workers"])]
    low, high = min(w["epoch"] for w in workers), max(w["epoch"] for w in workers)
    if cfg.resampled:
        low, new_carry = high + 1, {}
    else:
        new_carry = {}
        for epoch in range(low, high + 1):
            left: List[Piece] = []
            for old, state in zip(olds, states):
                for worker, wstate in enumerate(state["workers"]):
                    if wstate["epoch"] > epoch:
                        continue  # this worker had finished the epoch
                    pieces = epoch_pieces(old, epoch, worker, carry)
                    left += pieces if wstate["epoch"] < epoch else \
                        worker_remainder(old, pieces, dict(wstate, worker=worker))
            new_carry[epoch] = left
    skips = Counter()  # the old ranks' skip counts go to the new rank that takes their place
    for rank, state in enumerate(states):
        if rank % cfg.world_size == cfg.rank:
            for w in state["workers"]:
                skips.update(w["skips"])
    workers = [{"epoch": low, "consumed": 0, "read": [], "skips": dict(skips) if i == 0 else {}}
               for i in range(cfg.streams)]
    return {"epoch": low, "batches_in_epoch": 0, "next_worker": 0, "workers": workers, "carry": new_carry}
