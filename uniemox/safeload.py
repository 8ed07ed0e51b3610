"""Reading pickled checkpoint files without letting them run code.

Every pickled file goes through ``torch.load(weights_only=True)``: tensors, containers and
numbers, plus exactly the types a given kind of file really holds, allowed by name (DeepSpeed's
checkpoint files: ``DEEPSPEED_TYPES``; MAE's and the release's training checkpoints: their
``argparse.Namespace``). A file that needs anything else (a ``__reduce__`` payload names
``os.system`` or the like) is refused with one line naming the file and the type, before any
loader that could execute code sees it.

DeepSpeed's own loaders (``load_checkpoint``, ``zero_to_fp32``) unpickle without restriction:
``check_checkpoint_dir`` passes every file of a checkpoint through the restricted load first
(memory-mapped, so checking costs no copy of the tensors), the files of linked folders included:
what is checked is what the loader will open.
"""
import importlib
import os
import re
import warnings
from typing import Any, Iterable, Tuple

import torch

from uniemox.errors import UserError

# What DeepSpeed's checkpoint files hold besides tensors and containers (read off real ZeRO-0/1/2/3,
# fp32 and bf16, with and without optimizer offload, DeepSpeed 0.19: torch.serialization's
# get_unsafe_globals_in_checkpoint), and the fp16 engines' dynamic loss scaler. Their model states hold
# a set, which torch 2.6+ allows by itself and torch 2.5 only when named.
DEEPSPEED_TYPES = ("builtins.set",
                   "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                   "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                   "deepspeed.utils.tensor_fragment.fragment_address",
                   "deepspeed.runtime.zero.config.ZeroStageEnum")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def explain_refusal(path: str, exc: Exception, allowed: Iterable[str] = ()) -> str:
    """Why torch.load refused a file, in one line: the real cause, without torch's advice to load
    it unsafely, its colour codes or its line breaks."""
    text = _ANSI.sub("", str(exc))
    cause = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
    cause = " ".join(cause.split()).split(" Please use `torch.serialization", 1)[0]
    needed = re.findall(r"GLOBAL ([\w.]+)", cause)
    if needed:
        try:  # a zip checkpoint can list every global it needs without being loaded
            needed = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                      if g not in allowed] or needed
        except Exception:  # not a torch.save zip: the one the unpickler met is named
            pass
        extra = f"; allowed besides tensors and plain Python values: {', '.join(allowed)}" if allowed else ""
        return f"it needs {', '.join(needed)}, which a checkpoint may not hold (loading it could run code{extra})"
    if cause.startswith("Unsupported operand"):  # raw pickle.dump output or not a pickle at all
        return f"not a checkpoint written by torch.save ({cause}: a pickle instruction weights-only loading refuses)"
    return f"{type(exc).__name__}: {cause or ' '.join(text.split())}"


def load_restricted(path: str, allowed: Iterable[str] = (), mmap: bool = False, what: str = "checkpoint") -> Any:
    """``torch.load`` that runs no code: ``allowed`` names the extra types the file may hold.
    A missing, refused or unreadable file is a ``UserError`` of one line."""
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    allowed = tuple(allowed)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([_resolve(n) for n in allowed]):
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4": the error, if any, says what matters
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # code-carrying pickles, truncated zips, not a torch file at all
        raise UserError(f"cannot read {what} {path}: {explain_refusal(path, exc, allowed)}") from None


def checkpoint_files(tag_path: str) -> Tuple[str, ...]:
    """Every .pt file under a checkpoint folder (a universal checkpoint has one folder per tensor),
    through linked folders too: a loader follows links, so the check does (each real folder once,
    so a link cycle ends)."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(tag_path, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        found += [os.path.join(folder, f) for f in files if f.endswith(".pt")]
    return tuple(sorted(found))


def check_checkpoint_dir(tag_path: str) -> None:
    """Every pickled file of a checkpoint passes the restricted load (DeepSpeed's types allowed),
    or the first one that does not is refused."""
    for path in checkpoint_files(tag_path):
        load_restricted(path, DEEPSPEED_TYPES, mmap=True, what="checkpoint file")


def read_safetensors(path: str, what: str = "weights", tensors: bool = True):
    """(tensors, metadata) of a safetensors file (tensors only when asked: the header alone is cheap).
    A pickle or anything else under the name, a damaged header or a truncated file is a ``UserError``
    of one line: safetensors parses the file itself, it never unpickles."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else None
    except Exception as exc:  # SafetensorError, OSError, a header that is not JSON
        raise UserError(f"cannot read {what} {path}: not a readable safetensors file "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    return state, metadata
