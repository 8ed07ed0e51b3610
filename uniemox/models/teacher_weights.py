"""Where the CLIP teacher's weights come from: a local file, an open_clip tag, or (explicitly) none.

A weights file can never run code: OpenAI's release files (TorchScript archives) are read
with `torch.jit.load(...).state_dict()`, which unpickles only TorchScript's own restricted
format and runs none of the archive's code; everything else goes through
`torch.load(weights_only=True)` or safetensors.

OpenAI's state dicts use the same key names as open_clip's `CLIP` class; what differs is
the activation: OpenAI trained with QuickGELU, open_clip's plain configs (e.g. "ViT-B-16")
use GELU. A TorchScript archive, or a state dict carrying OpenAI's extra entries
(input_resolution, context_length, vocab_size), therefore builds the model with QuickGELU.
A plain (non-TorchScript) OpenAI state dict cannot be told apart from an open_clip one:
pass the model name "ViT-B-16-quickgelu" for it.
"""
import contextlib
import logging
import os
import zipfile
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Tuple, Union

import open_clip
import torch
from torch import nn

from uniemox.errors import UserError

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
PathLike = Union[str, os.PathLike]


def register_model_configs() -> None:
    """Make this project's open_clip configs (uniemox/assets/uniemox-clip-*.json) known by name."""
    for path in sorted(ASSETS.glob("uniemox-clip-*.json")):
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)


register_model_configs()


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {(text[0] if text else '')[:limit]}"


def _few(names, n: int = 3) -> str:
    names = list(names)
    more = f", ... (+{len(names) - n})" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a code/ folder; torch.save zips have none."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in name for name in zf.namelist())
    except zipfile.BadZipFile:
        return False


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
        raise UserError(f"teacher weights file {path}: entries that are not tensors: {_few(bad)}")
    return sd


def read_weights(path: PathLike) -> Tuple[Dict[str, torch.Tensor], bool]:
    """Read a CLIP state dict from `path` on the CPU. Returns (state_dict, is_openai), where
    is_openai means OpenAI's release format (so the model needs QuickGELU)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"teacher weights file {path} {what}")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        raise UserError(f"teacher weights file {path} cannot be read ({_first_line(err)})") from err
    is_openai = False
    try:
        if head[:4] == b"PK\x03\x04" and _is_torchscript(path):
            obj, is_openai = torch.jit.load(str(path), map_location="cpu").state_dict(), True
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
        is_openai = True
        sd = {k: v for k, v in sd.items() if k not in OPENAI_META_KEYS}
    return sd, is_openai


def load_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str, model_name: str) -> None:
    """Load `sd` into `model`, refusing (with one line) anything but an exact key and shape match."""
    expected = model.state_dict()
    sd = dict(sd)
    if "logit_scale" in sd and "logit_scale" in expected:  # scalar in some files, [1] in others
        sd["logit_scale"] = sd["logit_scale"].reshape(expected["logit_scale"].shape)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    problems = [f"{len(lst)} {what} ({_few(lst)})" for lst, what in
                ((missing, "missing keys"), (unexpected, "unexpected keys"), (shapes, "shape mismatches"))
                if lst]
    if problems:
        raise UserError(f"teacher weights {source} do not fit the open_clip model '{model_name}': "
                        + "; ".join(problems) + " - is the teacher model name right?")
    model.load_state_dict(sd, strict=True)


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns 'initialized randomly' for every pretrained=None build; we load weights
    right after (or warn ourselves), so that line would only mislead."""
    root = logging.getLogger()
    drop = lambda record: "initialized randomly" not in record.getMessage()  # noqa: E731
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _check_model_name(model_name: str) -> None:
    if open_clip.get_model_config(model_name) is None:
        names = open_clip.list_models()
        raise UserError(f"unknown open_clip model '{model_name}' for the teacher "
                        f"(e.g. ViT-B-16, ViT-B-16-quickgelu, uniemox-clip-tiny; {len(names)} known, "
                        "see open_clip.list_models())")


def build_clip(model_name: str, pretrained: Optional[str] = None,
               weights: Optional[PathLike] = None) -> Tuple[nn.Module, str]:
    """The open_clip model `model_name` (fp32, CPU) with its weights; returns (model, source).

    weights=FILE wins over pretrained; pretrained="none" gives a random teacher (warned);
    any other pretrained value is an open_clip tag and needs a reachable hub.
    """
    _check_model_name(model_name)
    if weights is not None:
        if pretrained is not None:
            log.info("teacher: weights file %s given, ignoring pretrained=%r", weights, pretrained)
        sd, is_openai = read_weights(weights)
        with _quiet_random_init_warning():
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=is_openai)
        load_checked(model, sd, f"file {weights}", model_name)
        return model, f"file {weights}" + (" (OpenAI format, QuickGELU)" if is_openai else "")
    if pretrained is None:
        raise UserError("no CLIP teacher weights: pass --teacher-weights FILE (an OpenAI or open_clip "
                        "CLIP state dict), an open_clip pretrained tag (e.g. teacher.pretrained: openai, "
                        "needs network), or teacher.pretrained: none for a random teacher (tests only)")
    if str(pretrained).lower() == "none":
        log.warning("teacher.pretrained is 'none': the CLIP teacher '%s' has RANDOM weights, so the "
                    "distillation target is meaningless (fine for tests and smoke runs only)", model_name)
        with _quiet_random_init_warning():
            return open_clip.create_model(model_name, pretrained=None), "random (pretrained: none)"
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if not open_clip.is_pretrained_cfg(model_name, pretrained):
        raise UserError(f"'{pretrained}' is not an open_clip pretrained tag of '{model_name}' "
                        f"(known: {_few(tags, 8) or 'none'}); for a local file use --teacher-weights FILE")
    quick_gelu = bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))
    try:  # open_clip only warns on a QuickGELU mismatch; we build what the weights were trained with
        model = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except Exception as err:
        raise UserError(f"could not fetch open_clip weights '{pretrained}' of '{model_name}' (no network "
                        "or hub unreachable?): download them on a connected machine and pass "
                        f"--teacher-weights FILE [{_first_line(err, 120)}]") from err
    return model, f"open_clip tag '{pretrained}'"
