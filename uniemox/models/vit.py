"""Vision Transformer encoder with timm / facebookresearch-MAE parameter names.

Keys: patch_embed.proj, cls_token, pos_embed (fixed sin-cos, not trained), blocks.{i}.(norm1,
attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2), norm; for classification fc_norm and head
(global average pooling, as MAE fine-tuning). ``forward_features`` / ``forward_head`` follow
timm's constructor contract.
"""

from typing import Iterable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .pos_embed import sincos_pos_embed_2d

LN_EPS = 1.0e-6


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of patch size {patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected {self.img_size}x{self.img_size} images, got {tuple(x.shape[-2:])}")
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, L, D]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (used by fine-tuning; identity when rate is 0 or in eval)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, attn_backend: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, backend=attn_backend)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


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


def fixed_pos_embed(grid_size: int, dim: int) -> torch.Tensor:
    """The [1, 1 + g*g, dim] sin-cos table, registered by callers as a persistent buffer: it is
    not learned, every checkpoint (also DeepSpeed's ZeRO-1/3 ones, which drop frozen
    parameters) carries it, and MAE's key name is kept."""
    return sincos_pos_embed_2d(dim, grid_size).unsqueeze(0)


class VisionTransformer(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, num_classes: int = 0, global_pool: str = "token",
                 drop_path_rate: float = 0.0, attn_backend: str = "auto"):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        self.embed_dim = self.num_features = embed_dim
        self.num_classes, self.global_pool = num_classes, global_pool
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", fixed_pos_embed(self.patch_embed.grid_size, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear decay rule
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, r, attn_backend)
                                    for r in rates)
        # MAE fine-tuning pools patch tokens and normalises them with fc_norm instead of norm.
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS) if global_pool == "token" else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS) if global_pool == "avg" else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.reset_parameters()

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

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

    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> [N, 1 + L, D] with position embeddings and the CLS token in front."""
        x = self.patch_embed(x)
        pos = self.pos_embed.to(x.dtype)  # a buffer: engines that cast parameters leave it fp32
        x = x + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: in training, each block keeps only its input for the backward and
        recomputes the rest there (activation memory of one block instead of all, about a third
        more compute). Random draws (drop-path) are replayed, so losses and gradients are the same."""
        self.grad_checkpointing = enable

    def run_sequence(self, blocks: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_sequence(self.blocks, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.run_blocks(self.embed_tokens(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc_norm(x[:, 1:].mean(dim=1)) if self.global_pool == "avg" else x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
