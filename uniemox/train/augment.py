"""Fine-tuning augmentation (METHOD §5, the release's timm recipe), in the reader's workers.

Per sample: RandomResizedCrop (bicubic, scale ``train_scale``), horizontal flip, RandAugment
(timm, e.g. ``rand-m9-mstd0.5-inc1``), ImageNet normalisation, random erasing (pixel mode).
Per batch, in the training loop: mixup / cutmix with label smoothing (timm's ``Mixup``).

timm's RandAugment and RandomErasing draw from the global ``random``, numpy and torch generators;
here those are seeded from the reader's per-sample ``random.Random`` and restored afterwards,
so a sample's augmentation stays a pure function of its position in the stream (exact resume)
and the caller's RNG streams are untouched.

`FinetuneLoader` is the shard loader with this transform in place of the reader's plain
crop + flip (a subclass: the reader itself has no option for it yet).
"""
import random
from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image

from uniemox.data.loader import ShardLoader
from uniemox.data.reader import ReaderConfig, ShardStream, expand_urls
from uniemox.data.transforms import IMAGENET_MEAN, IMAGENET_STD, random_resized_crop_box, to_tensor


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
    def __init__(self, size: int, scale: Tuple[float, float] = (0.08, 1.0), rand_augment: str = "",
                 reprob: float = 0.0):
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
        self.erase = None
        if reprob > 0:
            from timm.data.random_erasing import RandomErasing
            self.erase = RandomErasing(reprob, mode="pixel", max_count=1, device="cpu")

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        box = random_resized_crop_box(img.width, img.height, rng, self.scale)
        out = img.resize((self.size, self.size), Image.BICUBIC, box=box)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        if self.rand_augment is None and self.erase is None:
            return to_tensor(out)
        seed = rng.getrandbits(63)
        saved, saved_np = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            if self.rand_augment is not None:
                out = self.rand_augment(out)
            x = to_tensor(out, IMAGENET_MEAN, IMAGENET_STD)
            if self.erase is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    x = self.erase(x)
            return x
        finally:
            random.setstate(saved)
            np.random.set_state(saved_np)


class _AugmentedStream(ShardStream):
    def __init__(self, cfg, start, rotation, endless=False, augment=None):
        super().__init__(cfg, start, rotation, endless)
        if augment is not None:
            self.single = augment


class FinetuneLoader(ShardLoader):
    """`build_labeled_loader(train=True)` with `FinetuneAugment` as the per-sample transform."""

    def __init__(self, cfg: ReaderConfig, augment: FinetuneAugment, start_state: Optional[dict] = None):
        self.augment = augment
        super().__init__(cfg, pin_memory=False, start_state=start_state)

    def _loader(self, endless: bool = False):
        from torch.utils.data import DataLoader

        stream = _AugmentedStream(self.cfg, [dict(w) for w in self.workers], self.next_worker, endless,
                                  self.augment)
        return DataLoader(stream, batch_size=None, num_workers=self.cfg.num_workers, pin_memory=self.pin_memory,
                          prefetch_factor=self.prefetch_factor if self.cfg.num_workers else None)


def build_train_loader(urls, batch_size: int, num_workers: int, image_size: int, augment: FinetuneAugment,
                       shuffle_buffer: int, seed: int, rank: int, world_size: int,
                       num_classes: Optional[int] = None) -> FinetuneLoader:
    cfg = ReaderConfig(tuple(expand_urls(urls)), batch_size, num_workers, image_size, shuffle_buffer, seed, False,
                       rank, world_size, True, "train", num_classes)
    return FinetuneLoader(cfg, augment)


def build_mixup(mixup: float, cutmix: float, smoothing: float, num_classes: int, multi_label: bool):
    """timm's Mixup (batch mode, switch prob 0.5) or None when both alphas are 0."""
    if mixup <= 0 and cutmix <= 0:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=num_classes,
                 multi_label=multi_label)
