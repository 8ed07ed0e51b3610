"""Masked autoencoder around the ViT encoder: MAE random masking, decoder, pixel loss.

Parameter names follow facebookresearch/mae's models_mae.py (encoder keys at the top level,
decoder_embed, mask_token, decoder_pos_embed, decoder_blocks, decoder_norm, decoder_pred), so
its checkpoints load without renaming.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from uniemox.kernels import random_masking, unmask_tokens
from uniemox.losses import reconstruction_loss_from_images

from .vit import VisionTransformer, fixed_pos_embed, init_mae_weights, layer_norm, make_block


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """MAE's rule: int(L * (1 - r)) tokens stay visible (19 of 196 at r = 0.9)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_patches * (1 - mask_ratio)))


class MaskedAutoencoder(VisionTransformer):
    """A ``VisionTransformer`` encoder (keys unprefixed, as MAE) plus the MAE decoder."""

    def __init__(self, *, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, norm_pix_loss: bool = False, kernel_impl: str = "auto",
                 **encoder_kwargs):
        super().__init__(num_classes=0, global_pool="token", **encoder_kwargs)
        dim = self.embed_dim
        self.norm_pix_loss = norm_pix_loss
        self.kernel_impl = kernel_impl
        self.decoder_embed = nn.Linear(dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", fixed_pos_embed(self.patch_embed.grid_size, decoder_embed_dim))
        mlp_ratio = encoder_kwargs.get("mlp_ratio", 4.0)
        self.decoder_blocks = nn.ModuleList(
            make_block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth))
        self.set_attn_backend(encoder_kwargs.get("attn_backend", "auto"))
        self.decoder_norm = layer_norm(decoder_embed_dim)
        patch = self.patch_size
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch * patch * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        init_mae_weights(nn.ModuleList([self.decoder_embed, self.decoder_blocks,
                                        self.decoder_norm, self.decoder_pred]))

    @property
    def decoder_embed_dim(self) -> int:
        return self.decoder_embed.out_features

    def no_weight_decay(self) -> set:
        return super().no_weight_decay() | {"mask_token", "decoder_pos_embed"}

    def make_noise(self, imgs: torch.Tensor) -> torch.Tensor:
        return torch.rand(imgs.shape[0], self.patch_embed.num_patches, device=imgs.device)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (latent [N, 1 + K, D] after the final norm, mask [N, L] 1 = removed, ids_restore [N, L])."""
        if noise is None:
            noise = self.make_noise(imgs)
        x = self.patch_embed(imgs)
        if noise.shape != x.shape[:2]:
            raise ValueError(f"noise must have shape {tuple(x.shape[:2])}, got {tuple(noise.shape)}")
        keep = num_kept(x.shape[1], mask_ratio)
        pos = self.pos_embed.to(x.dtype)  # a buffer: engines that cast parameters leave it fp32
        x, mask, ids_restore = random_masking(x, noise, keep, pos[0, 1:], impl=self.kernel_impl)
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = self.norm(self.run_sequence(self.blocks, torch.cat([cls, x], dim=1)))
        return x, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """-> pixel predictions of every patch [N, L, p*p*3] (the patch outputs, not the CLS one)."""
        x = self.decoder_embed(latent)
        pos = self.decoder_pos_embed.to(x.dtype)
        patches = unmask_tokens(x[:, 1:], self.mask_token, ids_restore, pos[0, 1:], impl=self.kernel_impl)
        x = torch.cat([x[:, :1] + pos[:, :1], patches], dim=1)
        x = self.run_sequence(self.decoder_blocks, x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def reconstruction(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss_from_images(imgs, pred, mask, self.patch_size,
                                               self.norm_pix_loss, impl=self.kernel_impl)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: Optional[torch.Tensor] = None):
        """Plain MAE: -> (loss, pred, mask)."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.reconstruction(imgs, pred, mask), pred, mask
