"""AdamW parameter groups: weight decay on weight matrices only (MAE's rule).

No decay for biases, norms, tokens, position tables and any other 0/1-D parameter, nor for
names a module lists in ``no_weight_decay()`` (cls_token, mask_token, ...), nor for the
fusion's learned per-channel vectors (eps_bias, head weights), which are vectors in spirit.
"""
from typing import Dict, List

import torch.nn as nn

_VECTOR_NAMES = ("eps_bias", "weight_a", "weight_b")


def _skip_names(model: nn.Module) -> set:
    names = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    return names


def decay_groups(model: nn.Module, weight_decay: float) -> List[Dict]:
    skip = _skip_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        vector_like = param.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in _VECTOR_NAMES
        (no_decay if vector_like or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
