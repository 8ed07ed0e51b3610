"""CLIP's symmetric InfoNCE loss with a learned temperature (for training a teacher).

With i, t the L2-normalised image and text embeddings [B, D] and s = exp(learned log-scale),
capped at 100 as in CLIP:
    logits = min(s, 100) * i t^T                         (B x B)
    L = (CE(logits, arange(B)) + CE(logits^T, arange(B))) / 2
Batches may hold the same caption string more than once (e.g. emotion-only captions): that
needs no multi-positive targets. Identical strings give identical text embeddings, so their
logits are equal and the one-hot terms sum to what a shared target would give, in value and
in gradient.
"""
import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = 100.0  # CLIP caps the learned scale (its temperature's inverse) at 100


def clip_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (module docstring). ``image``, ``text``: [B, D] paired rows, not
    necessarily normalised; ``logit_scale``: s = exp(learned log-scale), as open_clip's
    CLIP.forward returns it (capped here, so the cap holds under any optimizer or ZeRO stage).
    Returns an fp32 scalar."""
    if image.ndim != 2 or image.shape != text.shape:
        raise ValueError(f"image and text embeddings must both be [B, D], got {tuple(image.shape)} "
                         f"and {tuple(text.shape)}")
    scale = logit_scale.float().clamp(max=MAX_LOGIT_SCALE)
    logits = scale * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t()
    labels = torch.arange(image.shape[0], device=image.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
