"""The release's checkpoint layout and every foreign checkpoint file: read safely, loaded loudly,
and the release's layout written (``mae_checkpoint``).

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
(uniemox.models.state_dicts) and logged, never dropped silently.
"""
import logging
import os
from typing import Mapping

import torch.nn as nn

from uniemox.errors import UserError
from uniemox.models.fusion import Fusion
from uniemox.models.fusion_release import from_release, to_release
from uniemox.models.state_dicts import (EXTRA_PARTS, HEAD_KEYS, LoadReport, load_encoder_state, load_into,
                                        split_checkpoint)
from uniemox.safeload import load_restricted, read_safetensors

logger = logging.getLogger(__name__)
# The only non-builtin type MAE's and the release's training checkpoints hold: their `args`.
# Allowed by name for this load only; anything else a file needs is refused (it could run code).
SAFE_GLOBALS = ("argparse.Namespace",)


def read_checkpoint(path: str) -> Mapping:
    """The raw object of a checkpoint file, loaded without executing code."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if not path.endswith(".safetensors"):
        return load_restricted(path, SAFE_GLOBALS)
    return read_safetensors(path, "checkpoint")[0]


def load_pretrainer_checkpoint(pretrainer: nn.Module, path: str) -> LoadReport:
    """MAE, release or timm weights into a ``UniEmoXPretrainer`` (encoder, decoder, fusion, projection)."""
    model_sd, extras = split_checkpoint(read_checkpoint(path))
    if any(k.startswith("model.") for k in model_sd):  # this project's own pretrainer state dict
        report = load_into(pretrainer, model_sd)
    else:
        report = load_into(pretrainer.model, model_sd, ignore_unexpected=HEAD_KEYS)
        for part, attr in EXTRA_PARTS.items():
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
