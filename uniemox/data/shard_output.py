"""The output folder of make_shards: shards that appear whole or not at all, and a rerun that
finishes what a killed run left.

* each shard is written under a hidden temporary name (``.train-000003.tar.partial``) and
  renamed to ``train-000003.tar`` once closed: a shard under its real name is complete;
* ``.incomplete`` is written before the first shard and removed after the manifest, which is
  written last (atomically): a folder with a manifest and without ``.incomplete`` is a finished
  shard set; the loaders read a set through its manifest only (manifest.py);
* a folder with ``.incomplete`` is what a killed (or failed) run left: rerunning the command
  removes its shards and temporary files and writes the set again;
* a folder with shards or a manifest and no ``.incomplete`` is someone else's: refused.
"""
import os
import re
from typing import Dict, List

import webdataset as wds

from ..errors import UserError
from ..io import atomic_write_json
from .manifest import MANIFEST, shard_name

INCOMPLETE = ".incomplete"
PARTIAL = ".partial"
_SHARD_FILE = re.compile(r"^\.?[\w-]+-\d{6}\.tar(\.partial)?$")


def _ours(name: str) -> bool:
    """A file a make_shards run writes into its folder (shards, temporaries, manifest, marker)."""
    return bool(_SHARD_FILE.match(name)) or name in (MANIFEST, INCOMPLETE) or name.startswith(f".{MANIFEST}.tmp")


def prepare_output(out_dir: str, command: Dict) -> List[str]:
    """Make ``out_dir`` ready for a new shard set; returns the files of an interrupted run removed.
    ``command`` (source and options) is recorded in the marker, for the line that names it."""
    removed: List[str] = []
    if os.path.isdir(out_dir):
        names = os.listdir(out_dir)
        if INCOMPLETE in names:  # a run of make_shards stopped before its manifest: redo
            removed = sorted(n for n in names if _ours(n) and n != INCOMPLETE)
            for name in removed:
                os.remove(os.path.join(out_dir, name))
        elif MANIFEST in names or any(_SHARD_FILE.match(n) for n in names):
            raise UserError(f"{out_dir} already holds shards: choose an empty output folder")
    elif os.path.exists(out_dir):
        raise UserError(f"output {out_dir} is not a folder")
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_json(os.path.join(out_dir, INCOMPLETE), command)
    return removed


def finish_output(out_dir: str) -> None:
    """After the manifest: the set is complete."""
    os.remove(os.path.join(out_dir, INCOMPLETE))


def remove_partials(out_dir: str) -> None:
    """Temporary shards of a run that failed (the complete ones stay for the rerun to redo)."""
    for name in os.listdir(out_dir):
        if name.endswith(PARTIAL) and _SHARD_FILE.match(name):
            os.remove(os.path.join(out_dir, name))


class SplitShardWriter:
    """``{split}-NNNNNN.tar`` of ``maxcount`` samples each, every shard written under its temporary
    name and renamed when full (or at ``close``)."""

    def __init__(self, out_dir: str, split: str, maxcount: int):
        self.out_dir, self.split, self.maxcount = out_dir, split, maxcount
        self.index, self.count, self.tar, self.file = -1, 0, None, None

    def _path(self, partial: bool) -> str:
        name = shard_name(self.split, self.index)
        return os.path.join(self.out_dir, f".{name}{PARTIAL}" if partial else name)

    def write(self, sample: Dict) -> None:
        if self.tar is None or self.count >= self.maxcount:
            self._finish()
            self.index, self.count = self.index + 1, 0
            self.file = open(self._path(partial=True), "wb")
            self.tar = wds.TarWriter(self.file, mtime=0.0)
        self.tar.write(sample)
        self.count += 1

    def _finish(self) -> None:
        if self.tar is None:
            return
        tar, self.tar = self.tar, None
        tar.close()  # the tar's end blocks; the file is ours to close
        self.file.flush()
        os.fsync(self.file.fileno())  # on disk before it takes its real name
        self.file.close()
        os.replace(self._path(partial=True), self._path(partial=False))

    def close(self) -> None:
        self._finish()

    def abandon(self) -> None:
        """After a failure: close without renaming (the temporary is removed by remove_partials)."""
        tar, self.tar = self.tar, None
        if tar is None:
            return
        for close in (tar.close, self.file.close):
            try:
                close()
            except OSError:  # the full disk that stopped the run refuses the last blocks too
                pass
