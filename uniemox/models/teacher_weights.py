"""Where the CLIP teacher's weights come from: a local file, an open_clip tag, or (explicitly) none.

A weights file can never run code. OpenAI's release files are TorchScript archives, and
`torch.jit.load` would run TorchScript (e.g. a class's __setstate__) while loading, so they
are read here by a restricted unpickler that only rebuilds tensors and records module
attributes (`_ScriptUnpickler`); everything else goes through `torch.load(weights_only=True)`
or safetensors.

OpenAI's state dicts use the same key names as open_clip's `CLIP` class; what differs is
the activation: OpenAI trained with QuickGELU, open_clip's plain configs (e.g. "ViT-B-16")
use GELU. The model is built with QuickGELU when the file says so: a TorchScript archive
whose modules include a QuickGELU (or no GELU at all), or a state dict carrying OpenAI's
extra entries (input_resolution, context_length, vocab_size). A plain OpenAI state dict
without those entries cannot be told apart from an open_clip one: name the model
"ViT-B-16-quickgelu" for it.
"""
import contextlib
import io
import logging
import os
import pickle
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
# Weights that ship inside the package, named like open_clip pretrained tags: tag -> (model, file).
# The card next to each file (same stem, .json) records how it was trained (launch/train_teacher.py).
EMBEDDED = {"uniemox-sample": ("uniemox-clip-tiny-64", "teacher-uniemox-sample.safetensors")}


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


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "DoubleStorage": torch.float64,
                   "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
                   "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool}


class _ScriptObject:
    """Stands in for a TorchScript class: keeps the attributes, has none of the methods."""

    def __setstate__(self, state):
        self.state = state


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    return storage.as_strided(size, stride, offset)


class _ScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's data.pkl: only tensors, containers and stand-in objects."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(zf.read(f"{prefix}/data.pkl")))
        self.zf, self.prefix, self.storages, self.classes = zf, prefix, {}, set()

    def find_class(self, module, name):
        if module.startswith("__torch__."):
            self.classes.add(name)
            return type(name, (_ScriptObject,), {})
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch.jit._pickle" and (name.startswith("build_") or name == "restore_type_tag"):
            return lambda value, *_: value  # typed-container tags of TorchScript's pickler
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        _kind, dtype, key, _location, numel = pid  # location ignored: everything lands on the CPU
        if key not in self.storages:
            raw = bytearray(self.zf.read(f"{self.prefix}/data/{key}"))
            self.storages[key] = torch.frombuffer(raw, dtype=dtype, count=numel)
        return self.storages[key]


def _flatten(obj, prefix: str, out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    for name, value in getattr(obj, "state", {}).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _flatten(value, f"{prefix}{name}.", out)
    return out


def read_torchscript_weights(path: PathLike) -> Tuple[Dict[str, torch.Tensor], bool]:
    """The tensors of a TorchScript archive, named like its `state_dict()`, without running it,
    and whether its activation is QuickGELU (OpenAI's archives have QuickGELU modules)."""
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise ValueError("no single data.pkl in the TorchScript archive")
        prefix = pkls[0].split("/")[0]
        if f"{prefix}/byteorder" in zf.namelist() and zf.read(f"{prefix}/byteorder") != b"little":
            raise ValueError("big-endian archives are not supported")
        unpickler = _ScriptUnpickler(zf, prefix)
        sd = _flatten(unpickler.load(), "", {})
        return sd, "QuickGELU" in unpickler.classes or "GELU" not in unpickler.classes


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
        if head[:4] == b"PK\x03\x04" and _is_torchscript(path):
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


def load_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str, model_name: str) -> None:
    """Load `sd` into `model`, refusing (with one line) anything but an exact key and shape match."""
    expected = model.state_dict()
    # TorchScript archives also store non-persistent buffers (open_clip's attn_mask): derived, not learned
    derived = {name for name, _ in model.named_buffers()} - set(expected)
    sd = {k: v for k, v in sd.items() if k not in derived}
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
    import json

    _, path = embedded_weights(tag)
    with open(path.with_suffix(".json"), encoding="utf-8") as f:
        return json.load(f)


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
    pretrained="uniemox-sample" (an `EMBEDDED` tag) loads weights shipped in the package;
    any other pretrained value is an open_clip tag and needs a reachable hub.
    """
    _check_model_name(model_name)
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
        with _quiet_random_init_warning():
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        load_checked(model, sd, source, model_name)
        return model, source + (" (OpenAI format: QuickGELU)" if quick_gelu else "")
    if pretrained is None:
        raise UserError("no CLIP teacher weights: pass --teacher-weights FILE (an OpenAI or open_clip "
                        "CLIP state dict), an open_clip pretrained tag (e.g. teacher.pretrained: openai, "
                        "needs network), teacher.pretrained: uniemox-sample (packaged, sample set only) "
                        "or teacher.pretrained: none for a random teacher (tests only)")
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
