"""Raw samples out of WebDataset tars, robust to damage; skip counters; seeded shuffle.

A truncated or unreadable shard ends that shard (the incomplete last sample is dropped)
and is counted; reading goes on with the next shard. Nothing sleeps, nothing retries.
"""
import logging
import random
import time
from collections import Counter
from typing import Dict, Iterable, Iterator, List

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from .sample_meta import SKIP_KINDS as META_SKIP_KINDS

logger = logging.getLogger("uniemox.data")

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SKIP_KINDS = ("corrupt_image", "incomplete_sample", "truncated_shard", "unreadable_shard") + META_SKIP_KINDS


class RateLimitedLog:
    """Log a warning at most once per `interval` seconds, with the count of those held back."""

    def __init__(self, interval: float = 10.0, log: logging.Logger = logger):
        self.interval, self.log = interval, log
        self.last, self.held = -float("inf"), 0

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.held += 1
            return
        suffix = f" (+{self.held} more skipped since the last message)" if self.held else ""
        self.log.warning("skipped: %s%s", message, suffix)
        self.last, self.held = now, 0


def iter_shard(url: str, counters: Counter, warn: RateLimitedLog) -> Iterator[Dict]:
    """Samples {'__key__', 'jpg', 'json', ...} of one tar, in file order."""
    current: Dict = {}
    try:
        stream = gopen(url, "rb")
    except Exception as e:
        counters["unreadable_shard"] += 1
        warn(f"cannot open shard {url}: {e}")
        return
    try:
        for member in tar_file_iterator(stream):
            key, suffix = base_plus_ext(member["fname"])
            if key is None:
                continue
            if current and key != current["__key__"]:
                yield current
                current = {}
            current.setdefault("__key__", key)
            current[suffix.lower()] = member["data"]
    except Exception as e:  # truncated / damaged tar: keep what was complete, go on
        counters["truncated_shard"] += 1
        warn(f"damaged shard {url} after {current.get('__key__', 'its start')}: {type(e).__name__}: {e}")
        if not ("json" in current and any(k in current for k in IMAGE_KEYS)):
            current = {}  # the sample being read when the tar broke is incomplete
    finally:
        stream.close()
    if current:
        yield current


def iter_shards(urls: Iterable[str], counters: Counter, warn: RateLimitedLog) -> Iterator[Dict]:
    for url in urls:
        yield from iter_shard(url, counters, warn)


def seeded_shuffle(samples: Iterable, bufsize: int, rng: random.Random) -> Iterator:
    """Shuffle through a buffer of `bufsize` items; a pure function of the input and rng."""
    if bufsize <= 1:
        yield from samples
        return
    buf: List = []
    for sample in samples:
        if len(buf) < bufsize:
            buf.append(sample)
            continue
        k = rng.randrange(bufsize)
        buf[k], sample = sample, buf[k]
        yield sample
    rng.shuffle(buf)
    yield from buf
