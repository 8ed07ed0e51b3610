"""Layer-wise learning-rate decay for ViT fine-tuning (MAE / BEiT rule), applied.

The release declares ``layer_decay=0.75`` and never uses it; here it is used. With L blocks,
layer ids are 0 for cls_token / pos_embed / patch_embed, i + 1 for ``blocks.i`` and L + 1 for
everything after the blocks (norm, fc_norm, head); a group's lr is

    lr_scale = layer_decay ** (L + 1 - layer_id)

times the scheduled lr (``schedule.set_lr`` honours ``group["lr_scale"]``). Weight decay
follows ``param_groups.decay_groups`` (none on biases, norms, tokens, position tables).
"""
from typing import Dict, List

import torch.nn as nn

from uniemox.train.param_groups import decay_groups


def layer_id(name: str, num_blocks: int) -> int:
    if name.startswith(("cls_token", "pos_embed", "patch_embed", "mask_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_blocks + 1


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> List[Dict]:
    """AdamW groups per (layer, decay / no decay), each with its ``lr_scale``; empty groups dropped."""
    num_blocks = len(model.blocks)
    decays = {id(p): g["weight_decay"] for g in decay_groups(model, weight_decay) for p in g["params"]}
    groups: Dict[tuple, Dict] = {}
    for name, param in model.named_parameters():
        if id(param) not in decays:  # frozen
            continue
        lid = layer_id(name, num_blocks)
        key = (lid, decays[id(param)])
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": decays[id(param)],
                           "lr_scale": layer_decay ** (num_blocks + 1 - lid), "layer_id": lid}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]
