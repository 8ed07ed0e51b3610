"""An open_clip model in training (teacher training), fed like the frozen teacher will be.

``ContrastiveCLIP(images, texts)`` returns CLIP's symmetric InfoNCE loss with its learned
temperature, the in-batch image -> caption top-1 accuracy and the scale; ``encode`` gives the
normalised embeddings for zero-shot evaluation. Everything goes through ``clip(...)``, so ZeRO-3
gathers the parameters it touches.
"""
from typing import Optional, Sequence

import torch
from torch import nn

from uniemox.data.transforms import to_device
from uniemox.losses.clip_contrastive import clip_contrastive_loss

from .teacher import ImageInput


class ContrastiveCLIP(nn.Module):
    def __init__(self, clip: nn.Module, tokenizer, input_norm: str):
        super().__init__()
        self.clip, self.tokenizer, self.image_input = clip, tokenizer, ImageInput(clip, input_norm)
        # DeepSpeed cannot broadcast 0-dim parameters; [1] loads back into any CLIP (load_checked)
        clip.logit_scale = nn.Parameter(clip.logit_scale.detach().reshape(1))

    def encode(self, images: Optional[torch.Tensor] = None, texts: Optional[Sequence[str]] = None):
        """(normalised image features or None, normalised text features or None, exp(logit scale))."""
        device = self.clip.logit_scale.device
        tokens = to_device(self.tokenizer(list(texts)), device) if texts is not None else None
        return self.clip(image=self.image_input(images) if images is not None else None, text=tokens)[:3]

    def forward(self, images: torch.Tensor, texts: Optional[Sequence[str]] = None, encode_only: bool = False):
        if encode_only:
            return self.encode(images, texts)
        image, text, scale = self.encode(images, texts)
        loss = clip_contrastive_loss(image, text, scale)
        with torch.no_grad():  # image -> caption top-1 in the batch; a copy of its own caption counts
            ids = {t: i for i, t in enumerate(texts)}  # one id per distinct caption
            caption = to_device(torch.tensor([ids[t] for t in texts]), image.device)
            best = (image @ text.t()).argmax(1)
            accuracy = (caption[best] == caption).float().mean()  # stays on the device
        return {"loss": loss, "batch_accuracy": accuracy, "logit_scale": scale.detach()}
