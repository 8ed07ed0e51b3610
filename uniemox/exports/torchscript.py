"""OpenAI's CLIP release files are TorchScript archives: ``torch.jit.load`` would run TorchScript
(e.g. a class's __setstate__) while loading, so their tensors are read here by a restricted
unpickler that only rebuilds tensors and records module attributes, never running anything."""
import io
import pickle
import os
import zipfile
from pathlib import Path
from typing import Dict, Tuple, Union

import torch

PathLike = Union[str, os.PathLike]


def is_torchscript(path: Path) -> bool:
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
