"""The UniEmoX pretraining module (docs/method.md#pretraining and #losses): one shared encoder, two
views, one fused token.

    alpha = P(LN(enc_cls(scene)))      beta = P(LN(enc_cls(person)))      gamma = Fusion(alpha, beta)
    L3 = masked pixel MSE of the scene view        (decoder on the scene view only)
    L2, L1 = distillation_losses(gamma, teacher_image(scene), teacher_text(prompt))

P is the MAE decoder's input Linear when the decoder is as wide as the teacher's embedding
(the release: 512 = CLIP ViT-B/16), else a projection of its own to the teacher's width.

The frozen teacher is attached, not registered: it never appears in ``parameters()`` or
``state_dict()``, so an optimizer or a ZeRO-3 engine wrapped around this module never sees it.
"""
import logging
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn

from uniemox.errors import UserError
from uniemox.losses import distillation_losses, parse_components

from .fusion import build_fusion
from .mae import MaskedAutoencoder
from .registry import get_arch

logger = logging.getLogger(__name__)
TextInput = Union[Sequence[str], torch.Tensor]
Targets = Tuple[torch.Tensor, torch.Tensor]  # (Omega, Lambda): the teacher's image and text embeddings


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of a no-grad tensor (teacher embeddings), this rank's first."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    rank = dist.get_rank()
    return torch.cat([parts[rank]] + parts[:rank] + parts[rank + 1:], dim=0)


class UniEmoXPretrainer(nn.Module):
    def __init__(self, model: MaskedAutoencoder, fusion: str = "easy", fusion_heads: int = 3,
                 proj_dim: int = 512, mask_ratio: float = 0.75, losses="all",
                 contrastive_scope: str = "local", kernel_impl: str = "auto", joint_views: bool = True):
        super().__init__()
        if contrastive_scope not in ("local", "global"):
            raise UserError(f"contrastive_scope must be 'local' or 'global', got {contrastive_scope!r}")
        self.model = model  # the release's checkpoint key 'model'
        self.fusion = build_fusion(fusion, dim=proj_dim, heads=fusion_heads)  # release key 'att_fusion'
        self.fusion_name = fusion
        self.proj_dim = proj_dim
        self.mask_ratio = mask_ratio
        self.components = parse_components(losses)
        self.contrastive_scope = contrastive_scope
        self.kernel_impl = kernel_impl
        # the two views through the encoder in one pass of 2B samples (the encoder is per sample:
        # the same result, in larger matrix products); False: two passes, as the release does
        self.joint_views = joint_views
        self.distill_proj = (None if proj_dim == model.decoder_embed_dim
                             else nn.Linear(model.embed_dim, proj_dim))
        if self.distill_proj is not None:
            nn.init.xavier_uniform_(self.distill_proj.weight)
            nn.init.zeros_(self.distill_proj.bias)
        self._teacher = None

    # -- the teacher, kept out of the module tree ------------------------------------------
    def attach_teacher(self, teacher) -> None:
        if teacher.embed_dim != self.proj_dim:
            raise UserError(f"teacher embedding width {teacher.embed_dim} != student projection width "
                            f"{self.proj_dim}; build the pretrainer with proj_dim={teacher.embed_dim}")
        object.__setattr__(self, "_teacher", teacher)

    @property
    def teacher(self):
        return self._teacher

    @property
    def uses_distillation(self) -> bool:
        return bool(self.components & {"similarity", "contrastive"})

    @property
    def uses_person_view(self) -> bool:
        return self.uses_distillation and self.fusion.uses_beta

    # -- pieces ------------------------------------------------------------------------------
    def project_cls(self, latent: torch.Tensor) -> torch.Tensor:
        """alpha/beta: the final-normed CLS token projected to the teacher's width."""
        proj = self.model.decoder_embed if self.distill_proj is None else self.distill_proj
        return proj(latent[:, 0])

    def mae(self, imgs: torch.Tensor, mask_ratio: Optional[float] = None,
            noise: Optional[torch.Tensor] = None):
        """Scene view: -> (reconstruction loss, pred [N, L, p*p*3], mask [N, L], cls_proj [N, proj_dim])."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.model.forward_encoder(imgs, ratio, noise)
        pred = self.model.forward_decoder(latent, ids_restore)
        return self.model.reconstruction(imgs, pred, mask), pred, mask, self.project_cls(latent)

    def mae_with_person(self, scene: torch.Tensor, person: torch.Tensor, noise_scene: Optional[torch.Tensor],
                        noise_person: Optional[torch.Tensor]):
        """``mae`` of the scene view and the person view's cls_proj from one encoder pass over both:
        -> (reconstruction loss, pred, mask, alpha, beta)."""
        n = scene.shape[0]
        noise = None
        if noise_scene is not None or noise_person is not None:
            noise = torch.cat([noise_scene if noise_scene is not None else self.model.make_noise(scene),
                               noise_person if noise_person is not None else self.model.make_noise(person)])
        latent, mask, ids_restore = self.model.forward_encoder(torch.cat([scene, person]), self.mask_ratio, noise)
        pred = self.model.forward_decoder(latent[:n], ids_restore[:n])
        cls = self.project_cls(latent)
        return self.model.reconstruction(scene, pred, mask[:n]), pred, mask[:n], cls[:n], cls[n:]

    def encode_view(self, imgs: torch.Tensor, mask_ratio: Optional[float] = None,
                    noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A view that is encoded but not reconstructed (the person view): -> cls_proj."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, _, _ = self.model.forward_encoder(imgs, ratio, noise)
        return self.project_cls(latent)

    def teacher_targets(self, scene: torch.Tensor, text: TextInput):
        """(Omega, Lambda): the teacher's image embedding of the scene view and its text embedding.
        ``text`` is prompts, CLIP tokens [B, 77], or precomputed embeddings [M, D] (float)."""
        if self._teacher is None:
            raise RuntimeError("no teacher attached: call attach_teacher() or disable distillation losses")
        omega = self._teacher.encode_image(scene)
        is_embedding = isinstance(text, torch.Tensor) and text.is_floating_point()
        lam = text.float() if is_embedding else self._teacher.encode_text(text)
        return omega, lam

    def distillation_targets(self, scene: torch.Tensor, text: Optional[TextInput]) -> Optional[Targets]:
        """(Omega, Lambda) of the distillation losses, Lambda gathered from every rank under the
        global scope; None when no distillation loss is selected. The frozen teacher's part of
        the step: the trainer calls it before the student, so that a compiled student's graph
        holds neither the teacher (prompt strings, its cache) nor the collective."""
        if not self.uses_distillation:
            return None
        if text is None:
            raise ValueError("distillation losses need the prompts (text) of the batch")
        omega, lam = self.teacher_targets(scene, text)
        return omega, _gather_rows(lam) if self.contrastive_scope == "global" else lam

    # -- the whole step ----------------------------------------------------------------------
    def forward(self, scene: torch.Tensor, person: Optional[torch.Tensor] = None,
                text: Optional[TextInput] = None, noise_scene: Optional[torch.Tensor] = None,
                noise_person: Optional[torch.Tensor] = None, targets: Optional[Targets] = None
                ) -> Dict[str, torch.Tensor]:
        """-> {"loss": total with graph, and each selected term: "reconstruction", "similarity",
        "contrastive"}; plus "pred" and "mask" of the scene view when it is reconstructed.
        ``targets``: ``distillation_targets(scene, text)`` computed beforehand (then ``text`` is
        not needed); else computed here from ``text``."""
        out: Dict[str, torch.Tensor] = {}
        terms = []
        if self.uses_person_view and person is None:
            raise ValueError(f"fusion {self.fusion_name!r} needs the person view")
        if targets is None:
            targets = self.distillation_targets(scene, text)
        beta = None
        if "reconstruction" in self.components:
            if self.uses_person_view and self.joint_views:
                rec, pred, mask, alpha, beta = self.mae_with_person(scene, person, noise_scene, noise_person)
            else:
                rec, pred, mask, alpha = self.mae(scene, noise=noise_scene)
            out.update(reconstruction=rec, pred=pred, mask=mask)
            terms.append(rec)
        elif self.uses_distillation:
            alpha = self.encode_view(scene, noise=noise_scene)
        if self.uses_distillation:
            if self.uses_person_view:
                beta = beta if beta is not None else self.encode_view(person, noise=noise_person)
                gamma = self.fusion(alpha, beta)
            else:
                gamma = alpha
            sim, con = distillation_losses(gamma, *targets, impl=self.kernel_impl)
            for name, value in (("similarity", sim), ("contrastive", con)):
                if name in self.components:
                    out[name] = value
                    terms.append(value)
        out["loss"] = torch.stack([t.float() for t in terms]).sum()
        return out


def create_pretrainer(name: str = "uniemox_vit_base_patch16", *, fusion: str = "easy",
                      fusion_heads: int = 3, proj_dim: int = 512, mask_ratio: float = 0.75,
                      losses="all", contrastive_scope: str = "local", norm_pix_loss: bool = False,
                      attn_backend: str = "auto", kernel_impl: str = "auto", joint_views: bool = True,
                      **arch_overrides) -> UniEmoXPretrainer:
    """Build a registered size, e.g. ``create_pretrainer("uniemox_vit_tiny_patch16", img_size=64,
    depth=2, mask_ratio=0.9, fusion="mlp_glu", proj_dim=teacher.embed_dim)``."""
    arch = get_arch(name, **arch_overrides)
    model = MaskedAutoencoder(**arch.encoder_kwargs(), **arch.decoder_kwargs(),
                              norm_pix_loss=norm_pix_loss, attn_backend=attn_backend,
                              kernel_impl=kernel_impl)
    return UniEmoXPretrainer(model, fusion=fusion, fusion_heads=fusion_heads, proj_dim=proj_dim,
                             mask_ratio=mask_ratio, losses=losses,
                             contrastive_scope=contrastive_scope, kernel_impl=kernel_impl, joint_views=joint_views)
