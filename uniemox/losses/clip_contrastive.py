"""CLIP's symmetric InfoNCE loss with a learned temperature (for training a teacher): open_clip's
own ``ClipLoss``, with CLIP's cap on the learned scale.

With i, t the L2-normalised image and text embeddings and s = exp(learned log-scale), capped at
100 as in CLIP:
    logits = min(s, 100) * i t^T
    L = (CE(logits, positives) + CE(logits^T, positives)) / 2
On one rank the logits are B x B. Across ranks (``world_size`` > 1) open_clip all-gathers the
embeddings, so every image is contrasted with the captions of every rank: with ``local_loss`` and
``gather_with_grad`` (what open_clip's large runs use, linear memory) each rank holds
[B_local, B_global] logits and the gradient, averaged over ranks, is the gradient of the loss over
the global batch; without ``local_loss`` each rank holds [B_global, B_global].

Batches may hold the same caption string more than once (e.g. emotion-only captions): that needs
no multi-positive targets. Identical strings give identical text embeddings, so their logits are
equal and the one-hot terms sum to what a shared target would give, in value and in gradient.
"""
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

MAX_LOGIT_SCALE = 100.0  # CLIP caps the learned scale (its temperature's inverse) at 100

# open_clip's gather_with_grad calls torch.distributed.nn.all_gather, which torch marks deprecated
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
                        category=FutureWarning)


class CappedClipLoss(ClipLoss):
    """open_clip's ClipLoss on normalised fp32 embeddings with the scale capped at 100 (here, so the
    cap holds under any optimizer or ZeRO stage). ``logits_shape``: the shape of the image->text
    logits of the last call (rows: this rank's images; columns: the captions they are contrasted
    with), plain ints known without reading the device."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_loss: bool = True, gather_with_grad: bool = True):
        super().__init__(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=world_size)
        self.logits_shape: Optional[Tuple[int, int]] = None

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        logits = super().get_logits(image_features, text_features, logit_scale, logit_bias)
        self.logits_shape = tuple(logits[0].shape)
        return logits

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        """``image``, ``text``: [B, D] paired rows, not necessarily normalised; ``logit_scale``:
        s = exp(learned log-scale), as open_clip's CLIP.forward returns it. An fp32 scalar."""
        if image.ndim != 2 or image.shape != text.shape:
            raise ValueError(f"image and text embeddings must both be [B, D], got {tuple(image.shape)} "
                             f"and {tuple(text.shape)}")
        return super().forward(F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1),
                               logit_scale.float().clamp(max=MAX_LOGIT_SCALE))


def clip_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The loss of one rank's batch (B x B logits): ``CappedClipLoss()(image, text, logit_scale)``."""
    return CappedClipLoss()(image, text, logit_scale)
