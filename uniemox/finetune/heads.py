"""The models fine-tuning trains: the whole encoder with a head, or a linear probe.

* fine-tuning: ``create_encoder(name, num_classes, global_pool, drop_path_rate)``, i.e. pooled
  tokens -> LayerNorm -> Linear (init std 2e-5), trained end to end.
* linear probe (MAE's recipe): the encoder is frozen and kept OUTSIDE the module tree (so the
  DeepSpeed engine and its checkpoints hold the head alone); the head is
  BatchNorm1d(affine=False, eps 1e-6) -> Linear (init std 0.01). For export the BatchNorm is
  folded into the Linear (eval mode: W' = W / s, b' = b - W' mu, s = sqrt(var + eps)), which
  gives a plain timm-style classifier.
* probe grid: many such heads on the same frozen features, one forward of the encoder for all.
"""
import copy
from typing import Dict, Optional

import torch
import torch.nn as nn

from uniemox.models.state_dicts import LoadReport


def load_init(encoder: nn.Module, path: str) -> LoadReport:
    """Pretrained encoder weights (any layout ``uniemox.exports.release`` reads, or an export folder)
    into a classifier; a head of another class count is left out (a fresh head, as MAE fine-tuning)."""
    from uniemox.exports.kinds import resolve_init
    from uniemox.exports.release import load_encoder_checkpoint

    return load_encoder_checkpoint(encoder, resolve_init(path))


BN_EPS = 1e-6  # MAE's probe BatchNorm


def probe_head(num_features: int, num_classes: int) -> nn.Sequential:
    head = nn.Sequential(nn.BatchNorm1d(num_features, affine=False, eps=BN_EPS), nn.Linear(num_features, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


class LinearProbe(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        encoder.requires_grad_(False)
        encoder.eval()
        object.__setattr__(self, "encoder", encoder)  # not a submodule: frozen, outside the engine
        self.head = probe_head(encoder.num_features, num_classes)
        self.autocast_dtype = None  # set by the trainer for bf16/fp16 runs

    def __deepcopy__(self, memo):
        """A copy (the head's EMA) shares the frozen encoder instead of copying it."""
        memo[id(self.encoder)] = self.encoder
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.encoder.eval()  # a parent's .train() must not switch the frozen encoder's mode
        with torch.no_grad(), torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.float32,
                                             enabled=self.autocast_dtype is not None):
            return self.encoder.forward_head(self.encoder.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(f.to(self.head[1].weight.dtype))

    def folded_state(self, head_state: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Encoder + head with the BatchNorm folded in: a plain classifier's state dict.
        ``head_state``: this module's state dict to take the head from (e.g. the fp32 master
        weights of the engine); default: the module's own tensors."""
        head = head_state or self.state_dict()
        scale = torch.sqrt(head["head.0.running_var"].float() + BN_EPS)
        weight = head["head.1.weight"].float() / scale[None, :]
        bias = head["head.1.bias"].float() - weight @ head["head.0.running_mean"].float()
        state = {k: v for k, v in self.encoder.state_dict().items() if not k.startswith("head.")}
        state.update({"head.weight": weight, "head.bias": bias})
        return state


class ProbeGrid(LinearProbe):
    """``count`` probe heads on one pass of the frozen features (DINOv2's linear evaluation): each
    starts from the weights LinearProbe's single head would, so the heads differ by their learning
    rate and weight decay alone (the optimizer's groups). Logits: [B, count, C]."""

    def __init__(self, encoder: nn.Module, num_classes: int, count: int):
        super().__init__(encoder, num_classes)
        self.heads = nn.ModuleList(copy.deepcopy(self.head) for _ in range(count))
        del self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).to(self.heads[0][1].weight.dtype)
        return torch.stack([head(f) for head in self.heads], dim=1)

    @staticmethod
    def head_state(state: Dict[str, torch.Tensor], index: int) -> Dict[str, torch.Tensor]:
        """Head ``index`` of a grid's state dict, under LinearProbe's names."""
        prefix = f"heads.{index}."
        return {"head." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    def folded_state(self, head_state: Optional[Dict[str, torch.Tensor]] = None,
                     index: int = 0) -> Dict[str, torch.Tensor]:
        """Head ``index`` folded as LinearProbe's: a plain classifier's state dict."""
        return super().folded_state(self.head_state(head_state or self.state_dict(), index))
