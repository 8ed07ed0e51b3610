"""The UniEmoX release's fusion weights (``att_fusion`` in its checkpoints) <-> this project's.

The release's modules (chincharles/u-emo ``models/attention_fusion.py`` at commit d251937, the
only commit where it is not empty) and their parameter names:

| ours | release class (``--use_fusion``) | release names |
|---|---|---|
| easy | AttentionFusion (easyfusion) | linear, bn (a LayerNorm) |
| weighted_sum | MultiHeadWeightedSumFusion (multihead_weighted_fusion) | alpha, beta, layer_norm, bias |
| dual_attention | MultiHeadAttentionFusion (dual_layer_attention_fusion) | W_a.{h}, W_b.{h} (Linear(C, 1) each), bias |
| mlp_glu | MLPMultiHeadAttentionGLU (mlp_attention_glu) | W_a.{h}, W_b.{h} (Linear(C, C) each), mlp.0, mlp.2, gate, bias |

Our modules keep the H per-head Linears of one input as ONE Linear whose output rows are the
heads' outputs side by side (head h = rows h*k .. (h+1)*k): loading concatenates the release's
``W_a.{h}`` along dim 0, exporting splits them again, so the round trip is exact.
"""
import re
from typing import Dict, Mapping, Optional

import torch

from uniemox.errors import UserError

from .fusion import FUSIONS, Fusion

RELEASE_CLASS = {"easy": "AttentionFusion", "weighted_sum": "MultiHeadWeightedSumFusion",
                 "dual_attention": "MultiHeadAttentionFusion", "mlp_glu": "MLPMultiHeadAttentionGLU"}
_LINEAR = ("weight", "bias")
# ours -> release, for parameters that are only renamed
RENAMES: Dict[str, Dict[str, str]] = {
    "easy": {"proj.weight": "linear.weight", "proj.bias": "linear.bias",
             "norm.weight": "bn.weight", "norm.bias": "bn.bias"},
    "weighted_sum": {"weight_a": "alpha", "weight_b": "beta", "norm.weight": "layer_norm.weight",
                     "norm.bias": "layer_norm.bias", "eps_bias": "bias"},
    "dual_attention": {"eps_bias": "bias"},
    "mlp_glu": {"eps_bias": "bias", **{f"{m}.{p}": f"{m}.{p}" for m in ("mlp.0", "mlp.2", "gate") for p in _LINEAR}},
}
# our stacked Linear -> the release's per-head ModuleList
HEADS: Dict[str, Dict[str, str]] = {"dual_attention": {"score_a": "W_a", "score_b": "W_b"},
                                    "mlp_glu": {"proj_a": "W_a", "proj_b": "W_b"}}
_HEAD_KEY = re.compile(r"^(W_[ab])\.(\d+)\.(weight|bias)$")


def fusion_name(fusion: Fusion) -> str:
    return next(name for name, cls in FUSIONS.items() if type(fusion) is cls)


def release_variant(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Which release module wrote `sd` (our name for it), or None when it is not the release's layout."""
    keys = set(sd)
    if "linear.weight" in keys and "bn.weight" in keys:
        return "easy"
    if "alpha" in keys and "beta" in keys:
        return "weighted_sum"
    if "W_a.0.weight" in keys:
        return "mlp_glu" if "mlp.0.weight" in keys else "dual_attention"
    return None


def to_release(fusion: Fusion) -> Dict[str, torch.Tensor]:
    """Our fusion's weights under the release's names (variants the release never shipped keep ours)."""
    name, own = fusion_name(fusion), fusion.state_dict()
    if name not in RELEASE_CLASS:
        return dict(own)
    out = {}
    for key, value in own.items():
        module, _, param = key.rpartition(".")
        if key in RENAMES[name]:
            out[RENAMES[name][key]] = value
        elif module in HEADS.get(name, {}):
            for h, part in enumerate(value.chunk(fusion.heads, dim=0)):
                out[f"{HEADS[name][module]}.{h}.{param}"] = part.clone()
        else:
            raise AssertionError(f"no release name for {name}'s {key}")  # a new parameter needs a mapping
    return out


def from_release(fusion: Fusion, sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A release-layout ``att_fusion`` state dict under our names for `fusion`. Keys it cannot place
    keep their names (the loader reports them); a file of another variant or head count is refused."""
    name, variant = fusion_name(fusion), release_variant(sd)
    if variant is None:
        return dict(sd)
    if variant != name:
        raise UserError(f"the checkpoint's fusion is the release's {RELEASE_CLASS[variant]} (fusion "
                        f"'{variant}' here), the model's is '{name}': build the model with fusion='{variant}'")
    back = {release: ours for ours, release in RENAMES[name].items()}
    heads_back = {release: ours for ours, release in HEADS.get(name, {}).items()}
    out, heads = {}, {}
    for key, value in sd.items():
        match = _HEAD_KEY.match(key)
        if key in back:
            out[back[key]] = value
        elif match and match.group(1) in heads_back:
            heads.setdefault((heads_back[match.group(1)], match.group(3)), {})[int(match.group(2))] = value
        else:
            out[key] = value
    for (module, param), parts in heads.items():
        if sorted(parts) != list(range(fusion.heads)):
            raise UserError(f"the checkpoint's fusion has {len(parts)} heads, the model's {fusion.heads}: "
                            f"build the model with fusion_heads={len(parts)}")
        out[f"{module}.{param}"] = torch.cat([parts[h] for h in range(fusion.heads)], dim=0)
    return out
