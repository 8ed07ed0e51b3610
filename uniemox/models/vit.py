"""Vision Transformer encoder: timm's ``VisionTransformer`` with the project's attention and
MAE's fixed sin-cos position table.

timm's class brings the whole timm model contract (``forward_features`` / ``forward_head``,
``forward_intermediates`` and ``features_only``, ``reset_classifier``, ``group_matcher``,
``dynamic_img_size``, TorchScript, FX); what this subclass changes:

* attention through ``attention.Attention``: the xformers / SDPA / math dispatch (``attn_backend``);
* ``pos_embed`` is a persistent buffer, not a parameter: MAE's fixed 2-D sin-cos table, never
  trained, carried by every checkpoint (also DeepSpeed's ZeRO-1/3 ones, which drop frozen
  parameters); at another grid (``img_size``, or ``dynamic_img_size=True`` at run time) the table
  is generated for that grid, so a model built at 384 and a dynamic one fed 384 px agree;
* MAE's initialisation and LayerNorm eps 1e-6; MAE's fine-tuning head (global average pool of the
  patch tokens -> ``fc_norm`` -> ``head``, init std 2e-5) with ``global_pool="avg"``;
* ``run_sequence``: the blocks of the MAE encoder and decoder, with activation checkpointing
  (``set_grad_checkpointing``) where a backward will follow (``forward_features`` uses timm's own).

Keys are timm's and facebookresearch/mae's: patch_embed.proj, cls_token, pos_embed,
blocks.{i}.(norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2), norm, fc_norm, head.
"""
from functools import partial
from typing import Dict, Iterable, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import register_notrace_function
from timm.models.vision_transformer import Block
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .pos_embed import sincos_pos_embed_2d, sincos_table

LN_EPS = 1.0e-6
GLOBAL_POOLS = ("token", "avg", "")
layer_norm = partial(nn.LayerNorm, eps=LN_EPS)


def init_mae_weights(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform Linear (zero bias), LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def fixed_pos_embed(grid_size: Union[int, Tuple[int, int]], dim: int) -> torch.Tensor:
    """The [1, 1 + h*w, dim] sin-cos table (a zero row for the CLS token in front)."""
    return sincos_pos_embed_2d(dim, grid_size).unsqueeze(0)


@torch.fx.wrap
@register_notrace_function  # a leaf for FX: the grid comparison is Python control flow on shapes
def pos_embed_for_grid(table: torch.Tensor, grid: Tuple[int, int], own_grid: Tuple[int, int]) -> torch.Tensor:
    """The table itself at its own grid; at another grid the sin-cos table of that grid."""
    if grid[0] == own_grid[0] and grid[1] == own_grid[1]:
        return table
    return sincos_table(table.shape[-1], grid[0], grid[1]).to(table.device).unsqueeze(0)


def make_block(dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> Block:
    """One pre-norm transformer block (timm's ``Block``) with this project's attention."""
    return Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=drop_path,
                 norm_layer=layer_norm, attn_layer=Attention)


class VisionTransformer(TimmVisionTransformer):
    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, num_classes: int = 0, global_pool: str = "token",
                 drop_path_rate: float = 0.0, attn_backend: str = "auto", dynamic_img_size: bool = False,
                 **timm_kwargs):
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                         global_pool=global_pool, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                         mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path_rate=drop_path_rate,
                         dynamic_img_size=dynamic_img_size, norm_layer=layer_norm, attn_layer=Attention,
                         weight_init="skip", **timm_kwargs)
        del self.pos_embed  # timm's learned table -> MAE's fixed one, as a buffer
        self.register_buffer("pos_embed", fixed_pos_embed(self.patch_embed.grid_size, embed_dim))
        self.set_attn_backend(attn_backend)
        self.reset_parameters()

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    def set_attn_backend(self, backend: str) -> None:
        for module in self.modules():
            if isinstance(module, Attention):
                module.backend = backend

    def reset_parameters(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # MAE: init the conv like a Linear
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        init_mae_weights(self.blocks)
        for norm in (self.norm, self.fc_norm):
            init_mae_weights(norm)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=2.0e-5)  # MAE fine-tuning head init
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Layers for layer-wise lr decay (timm's ``param_groups_layer_decay``): the embeddings, each
        block, then everything after the blocks in one last layer, as MAE's fine-tuning counts them
        (timm's ViT puts the final ``norm`` into the last block's layer instead)."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed|^norm_pre", blocks=[(r"^blocks\.(\d+)", None)])

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens -> [N, 1 + L, D]: CLS token in front, position table added (in the tokens'
        dtype: a buffer stays fp32 where an engine casts only parameters)."""
        if self.dynamic_img_size:
            b, h, w, c = x.shape
            pos = pos_embed_for_grid(self.pos_embed, (h, w), self.patch_embed.grid_size)
            x = x.view(b, -1, c)
        else:
            pos = self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + pos.to(x.dtype))

    def run_sequence(self, blocks: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
        """The blocks in turn; with grad checkpointing each keeps only its input for the backward
        and recomputes the rest there (one block's activations instead of all, about a third more
        compute). Drop-path draws are replayed, so losses and gradients are the same."""
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x
