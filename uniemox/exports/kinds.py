"""Which export a folder holds, for ``model.init``: the weights file to load (checked to belong
to its folder) and the architecture the folder records."""
import os
from dataclasses import fields
from typing import Dict

from uniemox.errors import UserError
from uniemox.io import read_json
from uniemox.models import get_arch

from . import hub, pretrain


def resolve_init(path: str) -> str:
    """A weights file from ``model.init``: a file as is; a pretraining export's encoder.safetensors
    or a timm export's model.safetensors, once the folder's files are known to belong together."""
    if os.path.isfile(path):
        return path
    if os.path.isfile(os.path.join(path, pretrain.ENCODER)):
        return pretrain.read_pretrain_export(path, need="encoder")[1]
    if os.path.isfile(os.path.join(path, hub.WEIGHTS)):
        hub.read_export_config(path)
        return os.path.join(path, hub.WEIGHTS)
    if os.path.isdir(path):
        raise UserError(f"model.init {path}: a folder without encoder.safetensors or model.safetensors "
                        f"(for a pretraining checkpoint run 'uniemox-pretrain --export CKPT OUT' first)")
    raise UserError(f"model.init not found: {path}")


def init_architecture(init: str) -> Dict:
    """model.name / model.arch recorded in a pretraining or timm export folder (empty for plain
    files, whose architecture the run config must name)."""
    config = os.path.join(init, "config.json")
    if not os.path.isfile(config):
        return {}
    data = read_json(config, "export config")
    if "run_config" in data:
        model = data["run_config"].get("model") or {}
        return {k: model[k] for k in ("name", "arch") if k in model}
    if "architecture" in data:  # timm's save_for_hf layout: model_args hold more than the architecture
        known = {f.name for f in fields(get_arch(data["architecture"]))}
        arch = {k: v for k, v in (data.get("model_args") or {}).items() if k in known}
        if isinstance(arch.get("img_size"), (list, tuple)):  # timm records (H, W); ours are square
            arch["img_size"] = int(arch["img_size"][0])
        return {"name": data["architecture"], "arch": arch}
    return {}
