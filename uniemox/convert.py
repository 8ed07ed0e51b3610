"""Loading foreign checkpoints into UniEmoX models, safely and loudly.

Accepted layouts (all read with ``torch.load(weights_only=True)`` or safetensors, so a file
can never run code):
  * facebookresearch/mae: released weights ``{"model": state_dict}``, encoder-only or with the
    decoder, and its training checkpoints ``{"model", "optimizer", "epoch", "scaler", "args"}``;
  * the UniEmoX release: ``main_pretrain.py``'s ``checkpoint.pth`` ``{"model", "att_fusion",
    "optimizer", "epoch", "args"}`` (keys ``module.``-prefixed by DDP) and ``checkpoint-N.pth``
    (MAE's form); ``att_fusion`` in the release's own names (models/fusion_release.py);
  * timm ViT weights (``patch_embed.proj``, ``blocks.N``, ``norm``, ``head`` ...): the encoder;
  * a bare state dict, or DeepSpeed's ``{"module": ...}``.
Keys that the target lacks, and target keys the file lacks, are returned in a ``LoadReport``
and logged, never dropped silently.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

import torch
import torch.nn as nn

from uniemox.errors import UserError
from uniemox.io import read_json
from uniemox.safeload import load_restricted
from uniemox.models.fusion import Fusion
from uniemox.models.fusion_release import from_release, to_release

logger = logging.getLogger(__name__)
StateDict = Dict[str, torch.Tensor]
# Fixed sin-cos tables: when a file's grid differs (another image size), our own table is kept.
_FIXED_TABLES = ("pos_embed", "decoder_pos_embed")
# Parts of a classifier checkpoint that a pretraining model has no place for, and vice versa.
_CLASSIFIER_KEYS = ("head.weight", "head.bias")
_HEAD_KEYS = _CLASSIFIER_KEYS + ("fc_norm.weight", "fc_norm.bias")
# Checkpoint parts beside "model" and the pretrainer submodule each one loads into.
_EXTRA_PARTS = {"att_fusion": "fusion", "distill_proj": "distill_proj"}
# The only non-builtin type MAE's and the release's training checkpoints hold: their `args`.
# Allowed by name for this load only; anything else a file needs is refused (it could run code).
SAFE_GLOBALS = ("argparse.Namespace",)


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


def read_checkpoint(path: str) -> Mapping:
    """The raw object of a checkpoint file, loaded without executing code."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if not path.endswith(".safetensors"):
        return load_restricted(path, SAFE_GLOBALS)
    from safetensors.torch import load_file
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # a damaged or hostile header
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}: {' '.join(str(exc).split())}") from None


def _strip(sd: Mapping, prefixes=("module.", "_orig_mod.")) -> StateDict:
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
    extras = {k: _strip(obj[k]) for k in _EXTRA_PARTS if isinstance(obj.get(k), Mapping)}
    for key in ("model", "module", "state_dict", "model_state"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError("checkpoint does not hold a state dict of tensors under 'model', 'module', "
                        "'state_dict' or at the top level")
    return _strip(obj), extras


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


def load_pretrainer_checkpoint(pretrainer: nn.Module, path: str) -> LoadReport:
    """MAE, release or timm weights into a ``UniEmoXPretrainer`` (encoder, decoder, fusion, projection)."""
    model_sd, extras = split_checkpoint(read_checkpoint(path))
    if any(k.startswith("model.") for k in model_sd):  # this project's own pretrainer state dict
        report = load_into(pretrainer, model_sd)
    else:
        report = load_into(pretrainer.model, model_sd, ignore_unexpected=_HEAD_KEYS)
        for part, attr in _EXTRA_PARTS.items():
            target = getattr(pretrainer, attr)
            if target is None:
                report.unexpected += [f"{part}.{k}" for k in extras.get(part, {})]
                continue
            weights = extras.get(part, {})
            sub = load_into(target, from_release(target, weights) if isinstance(target, Fusion) else weights)
            report.loaded += [f"{attr}.{k}" for k in sub.loaded]
            report.missing += [f"{attr}.{k}" for k in sub.missing]
            report.unexpected += [f"{part}.{k}" for k in sub.unexpected]
    logger.info("%s: %s", path, report.summary())
    return report


def read_pretrain_export(path: str, need: str = "pretrainer") -> Tuple[str, str, Dict]:
    """(pretrainer.safetensors, encoder.safetensors, the run config) of a pretraining export folder
    (``uniemox-pretrain --export``); the run config names the model it was written with. ``need``:
    the weights file the caller reads ("pretrainer" or "encoder"), which must be there."""
    weights, encoder = os.path.join(path, "pretrainer.safetensors"), os.path.join(path, "encoder.safetensors")
    config = os.path.join(path, "config.json")
    if not (os.path.isfile(config) and os.path.isfile(encoder if need == "encoder" else weights)):
        raise UserError(f"{path} is not a pretraining export ({need}.safetensors + config.json); make one "
                        f"with 'uniemox-pretrain --export CHECKPOINT OUT'")
    run_config = read_json(config, "export config").get("run_config") or {}
    if not (run_config.get("model") or {}).get("name"):
        raise UserError(f"{config} does not name the model (run_config.model.name)")
    return weights, encoder, run_config


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
    head = [k for k in _CLASSIFIER_KEYS if k in model_sd and (k not in own or own[k].shape != model_sd[k].shape)]
    if head:
        logger.info("head not loaded: the file's head has shape %s, the model's %s (fresh head)",
                    tuple(model_sd["head.weight"].shape),
                    tuple(own["head.weight"].shape) if "head.weight" in own else "none")
    ignore += head
    return load_into(encoder, {k: v for k, v in model_sd.items() if k not in ignore}, ignore_unexpected=ignore)


def load_encoder_checkpoint(encoder: nn.Module, path: str) -> LoadReport:
    """``load_encoder_state`` of a checkpoint file (read without executing code)."""
    report = load_encoder_state(encoder, read_checkpoint(path))
    logger.info("%s: %s", path, report.summary())
    return report


def mae_checkpoint(pretrainer: nn.Module) -> dict:
    """The release's layout, ``{"model": MAE keys, "att_fusion": the fusion in the release's names}``,
    plus ``"distill_proj"`` when the CLS projection is not the decoder's input Linear (fp32, CPU)."""
    def cpu(weights):
        return {k: v.detach().float().cpu() for k, v in weights.items()}
    out = {"model": cpu(pretrainer.model.state_dict()), "att_fusion": cpu(to_release(pretrainer.fusion))}
    if pretrainer.distill_proj is not None:
        out["distill_proj"] = cpu(pretrainer.distill_proj.state_dict())
    return out
