"""An open_clip model in training (teacher training), fed like the frozen teacher will be.

``ContrastiveCLIP(images, texts)`` returns CLIP's symmetric InfoNCE loss with its learned
temperature (open_clip's ClipLoss: across ranks, every image meets the captions of every rank),
the in-batch image -> caption top-1 accuracy, the scale and the logits' shape; ``encode`` gives the
normalised embeddings for zero-shot evaluation. Everything goes through ``clip(...)``, so ZeRO-3
gathers the parameters it touches.
"""
from typing import Optional, Sequence, Union

import torch
from torch import nn

from uniemox.data.transforms import to_device
from uniemox.losses.clip_contrastive import CappedClipLoss

from .teacher import ImageInput


class ContrastiveCLIP(nn.Module):
    def __init__(self, clip: nn.Module, tokenizer, input_norm: str, loss: Optional[CappedClipLoss] = None):
        """``loss``: the contrastive loss (default: one rank's own batch)."""
        super().__init__()
        self.clip, self.tokenizer, self.image_input = clip, tokenizer, ImageInput(clip, input_norm)
        self.loss = loss or CappedClipLoss()
        # DeepSpeed cannot broadcast 0-dim parameters; [1] loads back into any CLIP (load_checked)
        clip.logit_scale = nn.Parameter(clip.logit_scale.detach().reshape(1))

    def encode(self, images: Optional[torch.Tensor] = None, texts: Union[Sequence[str], torch.Tensor, None] = None):
        """(normalised image features or None, normalised text features or None, exp(logit scale)).
        ``texts``: strings, or tokens already made by ``tokenizer``."""
        device = self.clip.logit_scale.device
        if texts is not None:
            texts = to_device(texts if isinstance(texts, torch.Tensor) else self.tokenizer(list(texts)), device)
        return self.clip(image=self.image_input(images) if images is not None else None, text=texts)[:3]

    def forward(self, images: torch.Tensor, texts: Union[Sequence[str], torch.Tensor, None] = None,
                encode_only: bool = False):
        if encode_only:
            return self.encode(images, texts)
        image, text, scale = self.encode(images, texts)
        loss = self.loss(image, text, scale)
        rows, cols = self.loss.logits_shape
        with torch.no_grad():  # image -> caption top-1 in the batch; a copy of its own caption counts
            ids = {t: i for i, t in enumerate(texts)}  # one id per distinct caption
            caption = to_device(torch.tensor([ids[t] for t in texts]), image.device)
            best = (image @ text.t()).argmax(1)
            accuracy = (caption[best] == caption).float().mean()  # stays on the device
            # the logits' shape as device scalars (filled on the device: nothing is copied or read)
            rows, cols = (torch.full((), n, dtype=torch.float32, device=image.device) for n in (rows, cols))
        return {"loss": loss, "batch_accuracy": accuracy, "logit_scale": scale.detach(), "logits_rows": rows,
                "logits_cols": cols}
