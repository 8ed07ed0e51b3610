"""Which shards each worker reads in an epoch, and in which order it sees their samples.

A worker's epoch is a list of *pieces*: ``[shard index, excluded positions]``, the shard's
samples in file order less the excluded positions (samples another layout of the run already
consumed; empty for a plain epoch). A plain epoch's pieces are the epoch's shard permutation
(seeded by (seed, epoch)) cut as ``order[rank::world_size][worker::streams]``. After a resume on
another world size or worker count (elastic.py), the epochs that were under way are *carried*:
their remaining pieces, one list per epoch for the whole run, cut the same way under the new
layout. Everything here is a pure function of the config, the epoch and the carry, so every rank
computes the same plan without talking to the others.
"""
import math
import random
from typing import Dict, List, Optional

Piece = List  # [shard index into cfg.urls, sorted excluded positions]
Carry = Dict[int, List[Piece]]  # epoch -> the run's remaining pieces of that epoch


def plain_pieces(cfg, epoch: int, worker: int) -> List[Piece]:
    """The pieces of a worker in a plain epoch (``cfg``: a ReaderConfig)."""
    order = list(range(len(cfg.urls)))
    if cfg.resampled:
        rng = random.Random(f"{cfg.seed}:shards:{epoch}:{cfg.rank}:{worker}")
        return [[rng.choice(order), []] for _ in range(math.ceil(len(order) / (cfg.world_size * cfg.streams)))]
    if cfg.mode != "eval":
        random.Random(f"{cfg.seed}:shards:{epoch}").shuffle(order)
    return [[i, []] for i in order[cfg.rank::cfg.world_size][worker::cfg.streams]]


def epoch_pieces(cfg, epoch: int, worker: int, carry: Optional[Carry] = None) -> List[Piece]:
    """A worker's pieces: its share of the carried remainder where the epoch was under way at an
    elastic resume, else those of a plain epoch."""
    if carry and epoch in carry:
        return [list(p) for p in carry[epoch][cfg.rank::cfg.world_size][worker::cfg.streams]]
    return plain_pieces(cfg, epoch, worker)


def shuffle_rng(cfg, epoch: int, worker: int) -> random.Random:
    """The seeded shuffle buffer's generator of a worker's epoch."""
    return random.Random(f"{cfg.seed}:shuffle:{epoch}:{cfg.rank}:{worker}")


def sample_rng(cfg, epoch: int, worker: int, index: int) -> random.Random:
    """The augmentation's generator of one sample (its index in the worker's shuffled epoch)."""
    return random.Random(f"{cfg.seed}:{cfg.rank}:{worker}:{epoch}:{index}")
