"""Raw samples out of WebDataset tars (local, ``pipe:`` or remote: remote.py), robust to damage;
skip counters; seeded shuffle.

A local truncated or unreadable shard ends that shard (the incomplete last sample is dropped)
and is counted; reading goes on with the next shard. A remote shard that fails (a time-out, a
dropped connection, a server that went away) is retried a bounded number of times, reading on
from where it failed, then skipped and counted the same way: never a hang, never a sample twice.
"""
import logging
import random
import re
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from webdataset.tariterators import base_plus_ext, tar_file_iterator

from .remote import is_missing, is_remote, open_shard
from .sample_meta import SKIP_KINDS as META_SKIP_KINDS

logger = logging.getLogger("uniemox.data")

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (not samples), skipped as it skips them
SKIP_KINDS = ("corrupt_image", "oversized_image", "incomplete_sample", "truncated_shard", "unreadable_shard") + META_SKIP_KINDS


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


@dataclass(frozen=True)
class Retry:
    """How a remote shard is retried: ``attempts`` more tries after a failure (a time-out, a
    dropped connection, a server error), ``timeout`` seconds of silence before a read fails,
    ``backoff`` seconds before the first retry (doubled each time)."""
    attempts: int = 3
    timeout: float = 30.0
    backoff: float = 1.0


def data_retry(data) -> Retry:
    """The Retry of a config's data section (``io_timeout``, ``io_retries``)."""
    return Retry(attempts=data.io_retries, timeout=data.io_timeout)


BLOCK = 512
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: left to tarfile


class _Replay:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, stream):
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(n)
        out, self.head = (self.head, b"") if n < 0 or n >= len(self.head) else (self.head[:n], self.head[n:])
        return out + (self.stream.read(n - len(out)) if n < 0 or n > len(out) else b"")


def _read_exactly(stream, n: int) -> bytes:
    """``n`` bytes, fewer only at the end of the stream (a network stream may return less per read)."""
    data = stream.read(n)
    while 0 < len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256, for sizes past 8 GiB
        return int.from_bytes(field[1:], "big")
    return int(field.strip(b" \0") or b"0", 8)


def _pax_path(records: bytes) -> Optional[str]:
    pos, path = 0, None
    while pos < len(records):
        space = records.index(b" ", pos)
        length = int(records[pos:space])
        key, _, value = records[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


def tar_members(stream) -> Iterator[Tuple[str, bytes]]:
    """(name, data) of the regular files of a tar stream, in order. The 512-byte headers are read
    here directly: tarfile's stream mode costs several times the rest of a member's reading. Long
    names (pax ``path``, GNU ``L``) are honoured; a compressed tar goes through tarfile. An empty
    stream, a header whose checksum is wrong, or a stream that ends inside a member raise
    `tarfile.ReadError`; the end-of-archive blocks, or the stream's end at a member boundary, end it."""
    header = _read_exactly(stream, BLOCK)
    if not header:
        raise tarfile.ReadError("empty file")
    if header.startswith(_COMPRESSED):
        for member in tar_file_iterator(_Replay(header, stream)):
            yield member["fname"], member["data"]
        return
    long_name: Optional[str] = None
    while header and header.count(0) < BLOCK:
        if len(header) < BLOCK or _octal(header[148:156]) != sum(header) - sum(header[148:156]) + 8 * 32:
            raise tarfile.ReadError("truncated or damaged tar header")
        size, kind = _octal(header[124:136]), header[156:157]
        padded = size + (-size % BLOCK)
        data = _read_exactly(stream, padded)
        if len(data) < padded:
            raise tarfile.ReadError("unexpected end of data")
        data = data[:size]
        if kind == b"x":
            long_name = _pax_path(data) or long_name
        elif kind == b"L":
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        else:
            if kind in (b"0", b"\0", b"7"):  # a regular file
                name = long_name
                if name is None:
                    name = header[:100].split(b"\0", 1)[0]
                    prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
                    name = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
                if not _META.match(name):
                    yield name, data
            long_name = None
        header = _read_exactly(stream, BLOCK)


def _samples(stream) -> Iterator[Dict]:
    """Complete samples of a tar stream, in file order; raises what the stream raises, after the
    sample it was reading when it broke (incomplete) is dropped."""
    current: Dict = {}
    try:
        for name, data in tar_members(stream):
            key, suffix = base_plus_ext(name)
            if key is None:
                continue
            if current and key != current["__key__"]:
                yield current
                current = {}
            current.setdefault("__key__", key)
            current[suffix.lower()] = data
    except Exception:
        if "json" in current and any(k in current for k in IMAGE_KEYS):
            yield current  # the member that broke came after a complete sample
        raise
    if current:
        yield current


def iter_shard(url: str, counters: Counter, warn: RateLimitedLog, retry: Retry = Retry()) -> Iterator[Dict]:
    """Samples {'__key__', 'jpg', 'json', ...} of one tar, in file order. A remote shard that
    fails is opened again and read on from the first sample not yet given (never one twice, none
    left out), up to ``retry.attempts`` times; then, or at once for a local or missing shard, the
    rest of it is skipped and counted (``truncated_shard`` / ``unreadable_shard``)."""
    given, failures = 0, 0
    while True:
        try:
            stream = open_shard(url, retry.timeout)
        except Exception as e:
            if is_remote(url) and failures < retry.attempts and not is_missing(e):
                failures += 1
                time.sleep(retry.backoff * 2 ** (failures - 1))
                continue
            counters["unreadable_shard"] += 1
            warn(f"cannot open shard {url}: {type(e).__name__}: {e}")
            return
        try:
            for index, sample in enumerate(_samples(stream)):
                if index >= given:  # a retry reads past what was given before, without decoding it
                    given += 1
                    yield sample
            return
        except Exception as e:
            if is_remote(url) and failures < retry.attempts and not is_missing(e):
                failures += 1
                warn(f"shard {url} failed after {given} samples ({type(e).__name__}: {e}); retry {failures} of "
                     f"{retry.attempts}")
                time.sleep(retry.backoff * 2 ** (failures - 1))
                continue
            counters["truncated_shard" if given else "unreadable_shard"] += 1
            warn(f"{'damaged' if given else 'unreadable'} shard {url} after {given} samples: {type(e).__name__}: {e}")
            return
        finally:
            stream.close()


def iter_shards(urls: Iterable[str], counters: Counter, warn: RateLimitedLog, retry: Retry = Retry()) -> Iterator[Dict]:
    for url in urls:
        yield from iter_shard(url, counters, warn, retry)


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


def iter_pieces(urls: Sequence[str], pieces: Sequence, read: List[int], counters: Counter, warn: RateLimitedLog,
                retry: Retry = Retry()) -> Iterator[Dict]:
    """The samples of a worker's pieces (plan.py): each shard in file order less its excluded
    positions (skipped without decoding). ``read`` gets one count per piece begun: the samples
    given from it so far (elastic.py maps them back to shard positions)."""
    for shard, excluded in pieces:
        read.append(0)
        skip = set(excluded)
        for position, sample in enumerate(iter_shard(urls[shard], counters, warn, retry)):
            if position not in skip:
                read[-1] += 1
                yield sample
