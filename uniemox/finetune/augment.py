"""Fine-tuning augmentation (docs/method.md#fine-tuning, the release's timm recipe).

In the reader's workers, per sample (``FinetuneAugment``, uint8 out): RandomResizedCrop
(bicubic, scale ``train_scale``), horizontal flip, RandAugment (timm, e.g.
``rand-m9-mstd0.5-inc1``). On the device, per batch, as timm's prefetcher does: ImageNet
normalisation, random erasing (pixel mode, ``BatchErasing``), then mixup / cutmix with label
smoothing (timm's ``Mixup``, in the task's forward).

timm's RandAugment and RandomErasing draw from the global ``random``, numpy and torch generators;
here those are seeded (from the reader's per-sample ``random.Random``; from the micro-batch's
context on the device) and restored afterwards, so augmentation stays a pure function of the
position in the stream (exact resume) and the caller's RNG streams are untouched.

The reader takes the per-sample part as its transform:
``build_labeled_loader(..., train=True, view_transform=FinetuneAugment(...))``.
"""
import random
from typing import Tuple

import numpy as np
import torch
from PIL import Image

from uniemox.data.transforms import IMAGENET_MEAN, random_resized_crop_box, to_uint8_tensor


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize for Pillow >= 11, which refuses 0 bits: timm's increasing scale reaches 0
    bits at magnitude 10 (mstd draws get there), meaning a black image, as older Pillow gave."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    from PIL import ImageOps
    return ImageOps.posterize(img, bits_to_keep)


class FinetuneAugment:
    def __init__(self, size: int, scale: Tuple[float, float] = (0.08, 1.0), rand_augment: str = ""):
        self.size, self.scale = size, tuple(scale)
        self.rand_augment = None
        if rand_augment:
            from timm.data.auto_augment import rand_augment_transform
            hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(round(255 * m) for m in IMAGENET_MEAN),
                       "interpolation": Image.BICUBIC}
            self.rand_augment = rand_augment_transform(rand_augment, hparams)
            for op in self.rand_augment.ops:
                if getattr(op.aug_fn, "__name__", "") == "posterize":
                    op.aug_fn = _posterize

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        box = random_resized_crop_box(img.width, img.height, rng, self.scale)
        out = img.resize((self.size, self.size), Image.BICUBIC, box=box)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            seed = rng.getrandbits(63)
            saved, saved_np = random.getstate(), np.random.get_state()
            try:
                random.seed(seed)
                np.random.seed(seed % 2**32)
                out = self.rand_augment(out)
            finally:
                random.setstate(saved)
                np.random.set_state(saved_np)
        return to_uint8_tensor(out)


class BatchErasing:
    """timm's RandomErasing (pixel mode, one box per image, probability ``prob``) on a normalised
    batch on its device, its draws seeded by ``seed`` (the micro-batch's) and kept out of the
    global RNG streams."""

    def __init__(self, prob: float, device: torch.device):
        from timm.data.random_erasing import RandomErasing

        self.erase = RandomErasing(prob, mode="pixel", max_count=1, device=device)
        self.devices = [device] if device.type == "cuda" else []

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        saved = random.getstate()
        try:
            with torch.random.fork_rng(devices=self.devices):
                random.seed(seed)
                torch.manual_seed(seed)
                return self.erase(images)
        finally:
            random.setstate(saved)


def build_mixup(mixup: float, cutmix: float, smoothing: float, num_classes: int, multi_label: bool):
    """timm's Mixup (batch mode, switch prob 0.5) or None when both alphas are 0."""
    if mixup <= 0 and cutmix <= 0:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=num_classes,
                 multi_label=multi_label)
