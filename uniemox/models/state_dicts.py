"""Checkpoint state dicts into the project's models: key prefixes (DDP's ``module.``, compile's
``_orig_mod.``) off, the model's part of any accepted layout found, matching tensors copied with
every skipped key reported (``LoadReport``), never dropped silently. Files are read elsewhere
(``uniemox.exports``); this is what their tensors mean to a model.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

import torch
import torch.nn as nn

from uniemox.errors import UserError

logger = logging.getLogger(__name__)
StateDict = Dict[str, torch.Tensor]
# Fixed sin-cos tables: when a file's grid differs (another image size), our own table is kept.
_FIXED_TABLES = ("pos_embed", "decoder_pos_embed")
# Parts of a classifier checkpoint that a pretraining model has no place for, and vice versa.
CLASSIFIER_KEYS = ("head.weight", "head.bias")
HEAD_KEYS = CLASSIFIER_KEYS + ("fc_norm.weight", "fc_norm.bias")
# Checkpoint parts beside "model" and the pretrainer submodule each one loads into.
EXTRA_PARTS = {"att_fusion": "fusion", "distill_proj": "distill_proj"}


@dataclass
class LoadReport:
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)      # in the model, not in the file
    unexpected: List[str] = field(default_factory=list)   # in the file, not in the model
    kept_own: List[str] = field(default_factory=list)     # fixed tables of another grid size

    def summary(self) -> str:
        def some(keys):
            return ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else "")
        text = f"loaded {len(self.loaded)} tensors"
        if self.missing:
            text += f"; {len(self.missing)} missing from the file ({some(self.missing)})"
        if self.unexpected:
            text += f"; {len(self.unexpected)} not used ({some(self.unexpected)})"
        if self.kept_own:
            text += f"; kept own sin-cos table for {some(self.kept_own)}"
        return text


def strip_prefixes(sd: Mapping, prefixes=("module.", "_orig_mod.")) -> StateDict:
    out = {}
    for key, value in sd.items():
        for prefix in prefixes:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def split_checkpoint(obj: Mapping) -> Tuple[StateDict, Dict[str, StateDict]]:
    """-> (model state dict, extra parts) from any accepted layout; the extra parts are the
    release's ``att_fusion`` and this project's ``distill_proj`` where present."""
    if not isinstance(obj, Mapping):
        raise UserError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    extras = {k: strip_prefixes(obj[k]) for k in EXTRA_PARTS if isinstance(obj.get(k), Mapping)}
    for key in ("model", "module", "state_dict", "model_state"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError("checkpoint does not hold a state dict of tensors under 'model', 'module', "
                        "'state_dict' or at the top level")
    return strip_prefixes(obj), extras


def load_into(module: nn.Module, sd: StateDict, ignore_unexpected=()) -> LoadReport:
    """Copy matching tensors into ``module``; shape mismatches are errors except for fixed tables."""
    own = module.state_dict()
    report = LoadReport()
    usable = {}
    for key, value in sd.items():
        if key not in own:
            if key not in ignore_unexpected:
                report.unexpected.append(key)
        elif own[key].shape != value.shape:
            if key in _FIXED_TABLES:
                report.kept_own.append(key)
            else:
                raise UserError(f"shape mismatch for {key}: file {tuple(value.shape)}, "
                                f"model {tuple(own[key].shape)} (wrong model size?)")
        else:
            usable[key] = value
    module.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.missing = sorted(set(own) - set(usable) - set(report.kept_own))
    return report


def load_encoder_state(encoder: nn.Module, checkpoint: Mapping) -> LoadReport:
    """Encoder weights (a checkpoint object of any accepted layout) into a ``VisionTransformer``:
    the one way an encoder is loaded (fine-tuning's init, exports, timm's loader, predict).
    Decoder keys of a pretraining checkpoint are expected and not reported; a classifier head
    that does not fit (another class count, or none wanted) is left out, so the model keeps its
    fresh head (as MAE fine-tuning)."""
    model_sd, _ = split_checkpoint(checkpoint)
    if any(k.startswith("model.") for k in model_sd):  # this project's own pretrainer state dict
        model_sd = {k[len("model."):]: v for k, v in model_sd.items() if k.startswith("model.")}
    own = encoder.state_dict()
    ignore = [k for k in model_sd if k.startswith(("decoder_", "mask_token"))]
    head = [k for k in CLASSIFIER_KEYS if k in model_sd and (k not in own or own[k].shape != model_sd[k].shape)]
    if head:
        logger.info("head not loaded: the file's head has shape %s, the model's %s (fresh head)",
                    tuple(model_sd["head.weight"].shape),
                    tuple(own["head.weight"].shape) if "head.weight" in own else "none")
    ignore += head
    return load_into(encoder, {k: v for k, v in model_sd.items() if k not in ignore}, ignore_unexpected=ignore)
