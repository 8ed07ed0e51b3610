"""Reading pickled checkpoint files without letting them run code.

Every ``.pt`` file goes through ``torch.load(weights_only=True)``: tensors, containers and
numbers, plus exactly the types a given kind of file really holds, allowed by name. A file that
needs anything else (a ``__reduce__`` payload names ``os.system`` or the like) is refused with
one line naming the file and the type, before any loader that could execute code sees it.

DeepSpeed's own loaders (``load_checkpoint``, ``zero_to_fp32``) unpickle without restriction:
``check_checkpoint_dir`` passes every file of a checkpoint through the restricted load first
(memory-mapped, so checking costs no copy of the tensors).
"""
import importlib
import os
import pickle
import re
from typing import Any, Iterable, Tuple

import torch

from uniemox.errors import UserError

# What DeepSpeed's checkpoint files hold besides tensors and containers (read off real ZeRO-0/1/2/3,
# fp32 and bf16, with and without optimizer offload, DeepSpeed 0.19: torch.serialization's
# get_unsafe_globals_in_checkpoint), and the fp16 engines' dynamic loss scaler.
DEEPSPEED_TYPES = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                   "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                   "deepspeed.utils.tensor_fragment.fragment_address",
                   "deepspeed.runtime.zero.config.ZeroStageEnum")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _refusal(path: str, exc: Exception) -> UserError:
    text = str(exc)
    found = _GLOBAL.search(text)
    if found:
        return UserError(f"refused to load {path}: it holds {found.group(1)}, a type no checkpoint of this kind "
                         f"holds (loading it could run code)")
    reason = next((line.strip() for line in text.splitlines() if "nsupported" in line), "")
    return UserError(f"refused to load {path}: {reason or type(exc).__name__} (not a plain tensor file)")


def load_restricted(path: str, allowed: Iterable[str] = (), mmap: bool = False) -> Any:
    """``torch.load`` that runs no code: ``allowed`` names the extra types the file may hold.
    A refused or unreadable file is a ``UserError`` of one line."""
    if not os.path.isfile(path):
        raise UserError(f"not found: {path}")
    types = [_resolve(name) for name in allowed]
    try:
        with torch.serialization.safe_globals(types):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except Exception as exc:  # truncated or damaged zip, not a torch file at all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"cannot read {path}: {type(exc).__name__}: {first}") from None


def checkpoint_files(tag_path: str) -> Tuple[str, ...]:
    return tuple(sorted(os.path.join(tag_path, f) for f in os.listdir(tag_path) if f.endswith(".pt")))


def check_checkpoint_dir(tag_path: str) -> None:
    """Every pickled file of a checkpoint passes the restricted load (DeepSpeed's types allowed),
    or the first one that does not is refused."""
    for path in checkpoint_files(tag_path):
        load_restricted(path, DEEPSPEED_TYPES, mmap=True)
