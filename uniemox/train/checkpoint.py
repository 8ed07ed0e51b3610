"""Checkpoints that are either complete or ignored.

Layout under ``<run_dir>/checkpoints``::

    step_00000500/            DeepSpeed's files (model, ZeRO optimizer partitions)
        trainer_rank{r}.pt    this rank's step, data position and RNG states (atomic write)
        COMPLETE              written by rank 0 after every rank finished (JSON)
    latest                    the newest complete tag (temp file + rename)
    universal/step_00000500/  DeepSpeed's universal form of a checkpoint, for a resume on another
                              world size (elastic.py); removed once a newer checkpoint is complete

A process killed mid-save leaves a directory without COMPLETE: resuming skips it, and the
next successful save purges it. Only the newest ``keep`` complete checkpoints are kept.
"""
import logging
import os
import random
import re
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from uniemox.errors import UserError
from uniemox.io import atomic_save, atomic_write_json, atomic_write_text, describe_write_error, read_json
from uniemox.safeload import check_checkpoint_dir, load_restricted

from .elastic import UNIVERSAL, convert_to_universal

logger = logging.getLogger(__name__)
_TAG = re.compile(r"^step_(\d{8})$")
MARKER = "COMPLETE"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2],
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def complete_tags(root: str) -> List[str]:
    """Tags with a COMPLETE marker, oldest first."""
    if not os.path.isdir(root):
        return []
    tags = [t for t in os.listdir(root) if _TAG.match(t) and os.path.isfile(os.path.join(root, t, MARKER))]
    return sorted(tags)


def _inside(root: str, tag: str) -> bool:
    """Is the checkpoint ``root/tag`` really in ``root`` (not a link to a folder elsewhere, which
    every later ``--resume auto`` would go back to)? Skipped with a line when it is not."""
    real, home = os.path.realpath(os.path.join(root, tag)), os.path.realpath(root)
    if os.path.dirname(real) == home:
        return True
    logger.warning("--resume auto skips %s: a link to %s, outside %s (pass --resume PATH to use it)",
                   os.path.join(root, tag), real, home)
    return False


def find_resume(root: str, resume: Optional[str]) -> Optional[str]:
    """The checkpoint directory to resume from: ``auto``, the newest complete one under ``root``
    whose real path is there too (None on a fresh run); a path, that checkpoint (refused unless
    complete)."""
    if not resume:
        return None
    if resume == "auto":
        tags = [t for t in complete_tags(root) if _inside(root, t)]
        return os.path.join(root, tags[-1]) if tags else None
    path = resume.rstrip("/")
    if not os.path.isfile(os.path.join(path, MARKER)):
        raise UserError(f"--resume {resume}: not a complete checkpoint (no {MARKER} marker)")
    return path


def read_marker(tag_path: str) -> Dict[str, Any]:
    """The COMPLETE marker of a checkpoint: step, world size, the run config and model it was
    written with (what export and init read the architecture from)."""
    if not os.path.isfile(os.path.join(tag_path, MARKER)):
        raise UserError(f"{tag_path}: not a complete checkpoint (no {MARKER} marker)")
    return read_json(os.path.join(tag_path, MARKER), "checkpoint marker")


class Checkpointer:
    """Saves every ``every`` steps (0: only when asked) and keeps the newest ``keep``."""

    def __init__(self, root: str, keep: int, rank: int, world_size: int, every: int = 0):
        if keep < 1:
            raise UserError(f"checkpoint.keep must be at least 1, got {keep}")
        self.root, self.keep, self.rank, self.world_size, self.every = root, keep, rank, world_size, every
        os.makedirs(root, exist_ok=True)

    def due(self, step: int, total_steps: int) -> bool:
        """A periodic save at this step (the final one is the trainer's own call)."""
        return self.every > 0 and step % self.every == 0 and step < total_steps

    def save(self, engine, step: int, trainer_state: Dict[str, Any], meta: Dict[str, Any]) -> str:
        """Collective: every rank must call it. Returns the tag directory."""
        tag = tag_for(step)
        path = os.path.join(self.root, tag)
        if self.rank == 0 and os.path.isdir(path):
            shutil.rmtree(path)  # a leftover of a killed save at this very step
        dist.barrier()
        try:
            engine.save_checkpoint(self.root, tag=tag, save_latest=False)
            state = dict(trainer_state, step=step, rng=rng_state(), world_size=self.world_size)
            atomic_save(os.path.join(path, f"trainer_rank{self.rank}.pt"), lambda tmp: torch.save(state, tmp))
        except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as a RuntimeError
            raise self._write_failure(path, exc) from None
        self.commit(path, step, meta)
        return path

    def _write_failure(self, path: str, exc: Exception) -> UserError:
        """One line for a checkpoint that could not be written; its partial files are removed
        (they are never taken for complete) and the newest complete checkpoint stays."""
        kept = complete_tags(self.root)
        if self.rank == 0:
            shutil.rmtree(path, ignore_errors=True)
        return UserError(f"cannot write checkpoint {path}: {describe_write_error(exc, self.root)}; the last complete "
                         f"checkpoint is kept: {os.path.join(self.root, kept[-1]) if kept else 'none yet'}")

    def commit(self, path: str, step: int, meta: Dict[str, Any]) -> None:
        """Collective. Once every rank's files are on disk: the marker, then ``latest``, then the purge."""
        dist.barrier()
        if self.rank == 0:
            atomic_write_json(os.path.join(path, MARKER),
                              dict(meta, step=step, world_size=self.world_size, time=time.time()))
            atomic_write_text(os.path.join(self.root, "latest"), os.path.basename(path))
            self._purge(keep_tag=os.path.basename(path))
        dist.barrier()

    def _purge(self, keep_tag: str) -> None:
        complete = complete_tags(self.root)
        for old in complete[:-self.keep]:
            shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)
        for name in os.listdir(self.root):  # incomplete leftovers older than the newest complete
            if _TAG.match(name) and name < keep_tag and name not in complete:
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        universal = os.path.join(self.root, UNIVERSAL)
        if os.path.isdir(universal):
            for name in os.listdir(universal):
                if _TAG.match(name) and name < keep_tag:  # the run has gone on from it
                    shutil.rmtree(os.path.join(universal, name), ignore_errors=True)
            if not any(_TAG.match(n) for n in os.listdir(universal)):
                shutil.rmtree(universal, ignore_errors=True)

    def load(self, engine, tag_path: str) -> Dict[str, Any]:
        """Restore the engine and this rank's trainer state; RNG states are set here."""
        root, tag = os.path.split(tag_path.rstrip("/"))
        saved_world = read_marker(tag_path)["world_size"]
        check_checkpoint_dir(tag_path)  # no file runs code: DeepSpeed's loader unpickles without restriction
        if saved_world != self.world_size:
            raise UserError(f"checkpoint {tag_path} was written by {saved_world} ranks, this run has "
                            f"{self.world_size}: the data position cannot be resumed exactly")
        _load_engine(engine, root or self.root, tag)
        rank_file = os.path.join(tag_path, f"trainer_rank{self.rank}.pt")
        state = load_restricted(rank_file)
        set_rng_state(state["rng"])
        logger.info("resumed from %s at step %d", tag_path, state["step"])
        return state

    def load_elastic(self, engine, plan) -> Tuple[Dict[str, Any], List[Dict]]:
        """Collective. Restore the engine from a checkpoint of another world size (``plan``: an
        ElasticResume; universal form made first where it is partitioned) -> (the trainer state
        this rank continues from: its old rank's, or rank 0's for a new rank; every old rank's
        data state, in rank order)."""
        check_checkpoint_dir(plan.checkpoint)
        convert_to_universal(plan, self.rank)
        if plan.universal:
            check_checkpoint_dir(plan.universal)
        _load_engine(engine, *plan.load_dir_and_tag)
        states = [load_restricted(os.path.join(plan.checkpoint, f"trainer_rank{r}.pt"))
                  for r in range(plan.saved_world)]
        own = states[self.rank] if self.rank < len(states) else states[0]
        if self.rank < len(states):
            set_rng_state(own["rng"])
        if self.rank == 0:
            logger.info("resumed from %s at step %d on %d rank(s), written by %d (%s; global batch kept with "
                        "optim.grad_accum=%d)", plan.checkpoint, own["step"], self.world_size, plan.saved_world,
                        "DeepSpeed universal checkpoint " + plan.universal if plan.universal else "ZeRO-0, loaded whole",
                        plan.grad_accum)
        return own, [s["data"] for s in states]


def _load_engine(engine, directory: str, tag: str) -> None:
    """DeepSpeed restores the module, optimizer and schedule of ``directory/tag`` (its files already
    through check_checkpoint_dir)."""
    loaded, _ = engine.load_checkpoint(directory, tag=tag, load_module_strict=True)
    if loaded is None:
        raise UserError(f"DeepSpeed could not load checkpoint {os.path.join(directory, tag)}")


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_conflicts(marker: Dict[str, Any], now: Dict[str, Any], must_match: Sequence[str],
                     may_differ: Sequence[str] = ()) -> List[str]:
    """What stops a run from continuing a checkpoint: the keys under ``must_match`` (dotted
    prefixes) whose value differs between the checkpoint's marker and ``now`` (each a record:
    ``{"config": run config, "task": ..., "zero_stage": ...}``), except those under
    ``may_differ``. Each as 'key: saved -> now'."""
    def flat(record):
        return _flatten(dict(record.get("config") or {}, task=record.get("task"),
                             zero_stage=record.get("zero_stage")))
    saved, current = flat(marker), flat(now)
    def covered(key, prefixes):
        return any(key == p or key.startswith(p + ".") for p in prefixes)
    def show(values, key):
        return repr(values[key]) if key in values else "unset"
    keys = sorted(k for k in set(saved) | set(current) if covered(k, must_match) and not covered(k, may_differ))
    return [f"{k}: {show(saved, k)} -> {show(current, k)}" for k in keys
            if (k in saved) != (k in current) or saved.get(k) != current.get(k)
            if not (k in ("task", "zero_stage") and saved.get(k) is None)]  # markers of older runs lack them
