"""The pretraining export (``uniemox-pretrain --export CHECKPOINT OUT``), written and read here.

``pretrainer.safetensors`` (encoder, decoder, fusion, projection: everything to continue or to
score zero-shot), ``encoder.safetensors`` (the encoder alone under timm/MAE key names, for
fine-tuning, timm and MAE's own fine-tuning code) and ``config.json`` (the run config the
checkpoint was written with, the source checkpoint, the step, the export id), made whole or not
at all and checked to belong together when read (folder.py).
"""
import os
from typing import Dict, Optional, Tuple

import torch

from uniemox.errors import UserError
from uniemox.io import atomic_write_json, read_json

from .folder import ID_KEY, Progress, check_belonging, locate, new_export_id, write_whole

FORMAT = "uniemox-encoder-v2"  # v2: files stamped with the export id
CONFIG, PRETRAINER, ENCODER = "config.json", "pretrainer.safetensors", "encoder.safetensors"


def encoder_state(pretrainer_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The encoder's tensors under their timm/MAE names (``model.`` prefix off, decoder out)."""
    out = {}
    for key, value in pretrainer_state.items():
        if key.startswith("model.") and not key.startswith(("model.decoder", "model.mask_token")):
            out[key[len("model."):]] = value
    return out


def _is_pretrain_export(folder) -> bool:
    try:
        return read_json(os.path.join(folder, CONFIG)).get("format", "").startswith("uniemox-encoder-")
    except (UserError, AttributeError):
        return False


def write_pretrain_export(state: Dict[str, torch.Tensor], out_dir: str, run_config: Dict,
                          source: Optional[str] = None, step: Optional[int] = None,
                          progress: Progress = None) -> Dict[str, str]:
    """``out_dir`` from the pretrainer's fp32 state dict; returns the files' paths."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous().cpu() for k, v in state.items()}
    export_id = new_export_id()
    meta = {ID_KEY: export_id, "format": FORMAT, "step": str(step)}
    config = {"run_config": run_config, "format": FORMAT, "source": source and os.path.abspath(source),
              "export": {"id": export_id, "step": step, "files": [PRETRAINER, ENCODER]}}
    out = write_whole(out_dir, [(PRETRAINER, lambda d: save_file(state, str(d / PRETRAINER), metadata=meta)),
                                (ENCODER, lambda d: save_file(encoder_state(state), str(d / ENCODER), metadata=meta)),
                                (CONFIG, lambda d: atomic_write_json(d / CONFIG, config))],
                      _is_pretrain_export, progress)
    return {"pretrainer": str(out / PRETRAINER), "encoder": str(out / ENCODER), "config": str(out / CONFIG)}


def read_pretrain_export(path: str, need: str = "pretrainer") -> Tuple[str, str, Dict]:
    """(pretrainer.safetensors, encoder.safetensors, the run config) of a pretraining export folder,
    its files checked to belong together; the run config names the model. ``need``: the weights file
    the caller reads ("pretrainer" or "encoder"), which must be there."""
    folder = locate(path)
    config_path = os.path.join(folder, CONFIG)
    weights, encoder = os.path.join(folder, PRETRAINER), os.path.join(folder, ENCODER)
    if not (os.path.isfile(config_path) and os.path.isfile(encoder if need == "encoder" else weights)):
        raise UserError(f"{path} is not a pretraining export ({need}.safetensors + config.json); make one "
                        f"with 'uniemox-pretrain --export CHECKPOINT OUT'")
    config = read_json(config_path, "export config")
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is not an export config")
    stamp = config.get("export") or {}
    check_belonging(folder, stamp.get("id"), stamp.get("files") or [PRETRAINER, ENCODER], "pretraining export")
    run_config = config.get("run_config") or {}
    if not (run_config.get("model") or {}).get("name"):
        raise UserError(f"{config_path} does not name the model (run_config.model.name)")
    return weights, encoder, run_config
