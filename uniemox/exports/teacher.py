"""The CLIP teacher's weights: where they come from (a local file, the packaged weights, an open_clip
tag, or explicitly none) and the teacher's own export (``teacher.safetensors``: the weights with their
card and export id inside, written whole by one rename; the card as JSON beside it, checked to
belong to the file whenever it is read).

A weights file can never run code. OpenAI's release files are TorchScript archives, and
`torch.jit.load` would run TorchScript (e.g. a class's __setstate__) while loading, so they
are read here by a restricted unpickler that only rebuilds tensors and records module
attributes (torchscript.py); everything else goes through `torch.load(weights_only=True)`
or safetensors.

OpenAI's state dicts use the same key names as open_clip's `CLIP` class; what differs is
the activation: OpenAI trained with QuickGELU, open_clip's plain configs (e.g. "ViT-B-16")
use GELU. The model is built with QuickGELU when the file says so: a TorchScript archive
whose modules include a QuickGELU (or no GELU at all), or a state dict carrying OpenAI's
extra entries (input_resolution, context_length, vocab_size). A plain OpenAI state dict
without those entries cannot be told apart from an open_clip one: name the model
"ViT-B-16-quickgelu" for it.
"""
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Type, Union

import open_clip
import torch
from torch import nn

from uniemox.errors import UserError
from uniemox.io import atomic_save, atomic_write_json, read_json
from uniemox.models.clip_models import ASSETS, create_clip, check_model_name, few
from uniemox.models.teacher import CLIPTeacher
from uniemox.safeload import read_safetensors

from .folder import ID_KEY, new_export_id
from .torchscript import is_torchscript, read_torchscript_weights

log = logging.getLogger(__name__)

CARD_FORMAT = "uniemox-clip-teacher-v1"
CARD_KEY = "uniemox_card"  # the safetensors metadata key of the embedded card
_FILE_FIELDS = ("weights", "bytes", "sha256", "export_id", "format", "dtype")  # facts about one written file
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
PathLike = Union[str, os.PathLike]
# Weights that ship inside the package, named like open_clip pretrained tags: tag -> (model, file).
# The card next to each file (same stem, .json) records how it was trained (launch/train_teacher.py).
EMBEDDED = {"uniemox-sample": ("uniemox-clip-tiny-64", "teacher-uniemox-sample.safetensors")}


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {(text[0] if text else '')[:limit]}"


def _as_state_dict(obj, path: Path) -> Dict[str, torch.Tensor]:
    """Unwrap open_clip training checkpoints ({'state_dict': ...}) and 'module.'/'clip.' prefixes."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"teacher weights file {path} holds a {type(obj).__name__}, not a state dict")
    sd = {str(k): v for k, v in obj.items()}
    for prefix in ("module.", "clip."):  # DDP wrappers; CLIPTeacher.state_dict()
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"teacher weights file {path}: entries that are not tensors: {few(bad)}")
    return sd


def read_weights(path: PathLike) -> Tuple[Dict[str, torch.Tensor], bool]:
    """Read a CLIP state dict from `path` on the CPU. Returns (state_dict, quick_gelu), where
    quick_gelu says the file is in OpenAI's format (module docstring)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"teacher weights file {path} {what}")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        raise UserError(f"teacher weights file {path} cannot be read ({_first_line(err)})") from err
    quick_gelu = False
    try:
        if head[:4] == b"PK\x03\x04" and is_torchscript(path):
            obj, quick_gelu = read_torchscript_weights(path)
        elif path.suffix == ".safetensors" or head[8:9] == b"{":  # u64 header length, then JSON
            from safetensors.torch import load_file
            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as err:  # torch/safetensors raise many types for a bad file
        raise UserError(f"teacher weights file {path} is not a readable PyTorch/safetensors "
                        f"state dict ({_first_line(err)})") from err
    sd = _as_state_dict(obj, path)
    if any(k in sd for k in OPENAI_META_KEYS):
        quick_gelu = True
        sd = {k: v for k, v in sd.items() if k not in OPENAI_META_KEYS}
    return sd, quick_gelu


def embedded_weights(tag: str) -> Tuple[str, Path]:
    """(model name, file) of a packaged teacher tag, e.g. "uniemox-sample": no network involved."""
    if tag not in EMBEDDED:
        raise UserError(f"no embedded teacher weights '{tag}' (embedded: {', '.join(EMBEDDED)})")
    model_name, file = EMBEDDED[tag]
    path = ASSETS / file
    if not path.is_file():
        raise UserError(f"the embedded teacher weights '{tag}' are missing from the installed package "
                        f"({path}): reinstall uniemox")
    return model_name, path


def embedded_card(tag: str) -> Dict:
    """The training record of a packaged teacher (command, seed, first-step loss, zero-shot accuracy)."""
    return teacher_card(embedded_weights(tag)[1])


def build_clip(model_name: str, pretrained: Optional[str] = None,
               weights: Optional[PathLike] = None) -> Tuple[nn.Module, str]:
    """The open_clip model `model_name` (fp32, CPU) with its weights; returns (model, source).

    weights=FILE wins over pretrained; pretrained="none" gives a random teacher (warned);
    pretrained="uniemox-sample" (an `EMBEDDED` tag) loads weights shipped in the package;
    any other pretrained value is an open_clip tag and needs a reachable hub.
    """
    check_model_name(model_name)
    source = None
    if weights is None and pretrained in EMBEDDED:
        expected, weights = embedded_weights(pretrained)
        if model_name != expected:
            raise UserError(f"the embedded teacher weights '{pretrained}' belong to the model '{expected}', "
                            f"not '{model_name}' (set teacher.model={expected})")
        source, pretrained = f"embedded '{pretrained}' ({weights.name})", None
    if weights is not None:
        if pretrained is not None:
            log.info("teacher: weights file %s given, ignoring pretrained=%r", weights, pretrained)
        source = source or f"file {weights}"
        sd, quick_gelu = read_weights(weights)
        model = create_clip(model_name, sd, source, quick_gelu)
        return model, source + (" (OpenAI format: QuickGELU)" if quick_gelu else "")
    if pretrained is None:
        raise UserError("no CLIP teacher weights: pass --teacher-weights FILE (an OpenAI or open_clip "
                        "CLIP state dict), an open_clip pretrained tag (e.g. teacher.pretrained: openai, "
                        "needs network), teacher.pretrained: uniemox-sample (packaged, sample set only) "
                        "or teacher.pretrained: none for a random teacher (tests only)")
    if str(pretrained).lower() == "none":
        log.warning("teacher.pretrained is 'none': the CLIP teacher '%s' has RANDOM weights, so the "
                    "distillation target is meaningless (fine for tests and smoke runs only)", model_name)
        return create_clip(model_name), "random (pretrained: none)"
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if not open_clip.is_pretrained_cfg(model_name, pretrained):
        raise UserError(f"'{pretrained}' is not an open_clip pretrained tag of '{model_name}' "
                        f"(known: {few(tags, 8) or 'none'}); for a local file use --teacher-weights FILE")
    quick_gelu = bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))
    try:  # open_clip only warns on a QuickGELU mismatch; we build what the weights were trained with
        model = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except Exception as err:
        raise UserError(f"could not fetch open_clip weights '{pretrained}' of '{model_name}' (no network "
                        "or hub unreachable?): download them on a connected machine and pass "
                        f"--teacher-weights FILE [{_first_line(err, 120)}]") from err
    return model, f"open_clip tag '{pretrained}'"


def load_teacher(model_name: str = "ViT-B-16", pretrained: Optional[str] = None, weights: Optional[PathLike] = None,
                 cls: Type[CLIPTeacher] = CLIPTeacher, **kwargs) -> CLIPTeacher:
    """The frozen teacher (``cls``: CLIPTeacher or a subclass) of ``build_clip``'s weights;
    ``kwargs``: device, precision, input_norm, text_cache_size."""
    clip, source = build_clip(model_name, pretrained=pretrained, weights=weights)
    return cls(clip, model_name, source, **kwargs)


# -- the teacher's export: one weights file, its card inside, a copy of the card beside it ------------
def write_teacher_weights(clip_state: Dict[str, torch.Tensor], out_file: PathLike, dtype: str,
                          card: Dict) -> Dict:
    """``out_file`` (.safetensors): the CLIP state dict in ``dtype`` with its card and export id in
    the file's metadata, written whole (one atomic rename: the file is the export); then the card
    with the file's size and digest as JSON beside it (same stem), for people. Returns that card."""
    from safetensors.torch import save_file

    if dtype not in ("fp16", "fp32"):
        raise UserError(f"export.dtype must be fp16 or fp32, got {dtype!r}")
    clip = {k: v.to(torch.float16 if dtype == "fp16" else torch.float32).contiguous() for k, v in clip_state.items()}
    export_id = new_export_id()
    card = {k: v for k, v in card.items() if k not in _FILE_FIELDS}
    card.update(format=CARD_FORMAT, dtype=dtype, export_id=export_id)
    out = Path(out_file).with_suffix(".safetensors")
    meta = {"format": CARD_FORMAT, "model": str(card.get("model", "")), ID_KEY: export_id,
            CARD_KEY: json.dumps(card)}
    atomic_save(out, lambda tmp: save_file(clip, tmp, metadata=meta))
    os.chmod(out, 0o644)  # a package data file: readable by every user of an install
    card = dict(card, weights=out.name, bytes=out.stat().st_size, sha256=hashlib.sha256(out.read_bytes()).hexdigest())
    atomic_write_json(out.with_suffix(".json"), card)
    return card


def teacher_card(weights: PathLike) -> Dict:
    """The card of a teacher weights file: the JSON beside it, which must belong to the file (the
    same export id as the card inside the file), or the card inside where there is none beside."""
    weights = Path(weights)
    metadata = read_safetensors(str(weights), "teacher weights", tensors=False)[1]
    if CARD_KEY not in metadata:
        raise UserError(f"{weights} carries no card (not a teacher export of this project, or an older one: "
                        f"export it again with 'uniemox-train-teacher --export CHECKPOINT OUT_FILE')")
    beside = weights.with_suffix(".json")
    if not beside.is_file():
        return json.loads(metadata[CARD_KEY])
    card = read_json(beside, "teacher card")
    if not isinstance(card, dict) or card.get("export_id") != metadata.get(ID_KEY):
        raise UserError(f"{beside} belongs to another export than {weights.name} (export id "
                        f"{card.get('export_id') if isinstance(card, dict) else None} != {metadata.get(ID_KEY)}): "
                        f"a mix of two exports; export again")
    return card
