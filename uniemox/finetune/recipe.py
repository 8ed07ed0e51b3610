"""The loss and optimizer of fine-tuning (docs/method.md#fine-tuning).

Loss: BCE with logits for multi-label heads; soft-target cross-entropy after mixup/cutmix
(the mixed targets carry the label smoothing); label-smoothing cross-entropy; or plain
cross-entropy. Optimizer: AdamW on layer-wise lr-decay groups (fine-tuning), or LARS
(MAE's linear probe: trust ratio on weight matrices only, momentum 0.9, no weight decay).

Layer-wise lr decay (MAE / BEiT rule; the release declares ``layer_decay=0.75`` and never uses
it, here it is used): timm's ``param_groups_layer_decay`` on the encoder's ``group_matcher``, i.e.
layer 0 = cls_token / patch_embed, layer i + 1 = ``blocks.i``, layer L + 1 = what follows the
blocks (norm, fc_norm, head); a group's lr is ``layer_decay ** (L + 1 - layer)`` times the
scheduled lr (``schedule.set_lr`` honours ``group["lr_scale"]``); weight decay on weight
matrices only (none on 1-D parameters and the encoder's ``no_weight_decay()``).
"""
from typing import Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from uniemox.errors import UserError
from uniemox.train.engine import build_optimizer, zero_stage
from uniemox.train.param_groups import decay_groups


def build_criterion(multi_label: bool, mixup: bool, smoothing: float) -> Callable:
    if multi_label:
        return lambda logits, target: F.binary_cross_entropy_with_logits(logits, target)
    if mixup:
        return lambda logits, target: torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return lambda logits, target: F.cross_entropy(logits, target, label_smoothing=smoothing)


def param_groups(model: nn.Module, linear_probe: bool, weight_decay: float, layer_decay: float) -> List[Dict]:
    if linear_probe:  # the probe's head only; LARS adapts weight matrices, not biases (MAE)
        groups = decay_groups(model, weight_decay)
        for g in groups:
            g["always_adapt"] = any(p.ndim > 1 for p in g["params"])
        return [g for g in groups if g["params"]]
    if layer_decay < 1.0:
        from timm.optim import param_groups_layer_decay
        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=model.no_weight_decay(),
                                        layer_decay=layer_decay)
    return [g for g in decay_groups(model, weight_decay) if g["params"]]


def build_torch_optimizer(name: str, groups: List[Dict], lr: float, betas, ds: Dict, device: torch.device):
    if name == "adamw":
        return build_optimizer(groups, lr, betas, ds, device)
    if name == "lars":
        if zero_stage(ds) > 0:
            ds["zero_allow_untested_optimizer"] = True  # LARS keeps one momentum buffer per tensor
        from timm.optim import Lars
        return Lars(groups, lr=lr, momentum=0.9, weight_decay=0.0, trust_coeff=0.001)
    raise UserError(f"optim.name must be adamw or lars, got {name!r}")
