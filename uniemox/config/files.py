"""The shipped configs (the repository's configs/, installed as ``uniemox.configs``): run
recipes in YAML and DeepSpeed JSON, found the same way from a checkout, an editable install or
a wheel, whatever the working directory."""
import os
from importlib import resources
from typing import Any, Dict, List, Optional

from uniemox.errors import UserError

from .core import read_yaml

DEFAULT_DEEPSPEED = "zero2.json"


def _shipped():
    return resources.files("uniemox.configs")


def shipped_names(suffix: str) -> List[str]:
    return sorted(p.name for p in _shipped().iterdir() if p.name.endswith(suffix))


def recipe(name: str) -> Dict[str, Any]:
    """A shipped run recipe by name (``pretrain_sample`` or ``pretrain_sample.yaml``)."""
    file = name if name.endswith(".yaml") else f"{name}.yaml"
    path = _shipped() / file
    if not path.is_file():
        raise UserError(f"no shipped recipe {name!r} (shipped: {', '.join(shipped_names('.yaml'))})")
    with resources.as_file(path) as real:
        return read_yaml(str(real))


def deepspeed_config(path: Optional[str]) -> str:
    """The DeepSpeed JSON to use: a file that exists as given; else a shipped one of that name
    (``configs/zero2.json`` from any directory, or just ``zero2``); None: the shipped zero2.json."""
    if path and os.path.isfile(path):
        return path
    name = os.path.basename(path) if path else DEFAULT_DEEPSPEED
    name = name if name.endswith(".json") else f"{name}.json"
    shipped = _shipped() / name
    if shipped.is_file():
        with resources.as_file(shipped) as real:  # a real file for an installed package too
            return str(real)
    raise UserError(f"DeepSpeed config not found: {path} (shipped: {', '.join(shipped_names('.json'))})")
