"""The two views of docs/method.md#pretraining and the evaluation view, driven by an explicit RNG.

scene view: RandomResizedCrop(S, scale=(0.2, 1.0), ratio=(3/4, 4/3), bicubic), horizontal
flip with p=0.5, ImageNet mean/std. person view: the crop of person_box, then the same
augmentation with its own draws; the whole image when the box is null.

The reader's views are cut from a uint8 tensor (`images.decode_image_tensor`): the crop is a
view of the decoded pixels (the person crop and the scene crop share one decode), resized by
torch's vectorised uint8 bicubic kernel with antialiasing (`resized_crop`), the filter of
Pillow's BICUBIC (a = -0.5, widened by the scale when reducing) at about a third of its time.
The views are MAE's RandomResizedCrop (torchvision on a PIL image: the crop, then Pillow's
bicubic resize) of the same box to within a level for all but a few pixels in 10^5 (docs/data.md,
"Augmentation"). PIL images are taken too.

Every view leaves the reader's workers as uint8 (pretraining's two views, fine-tuning's
augmented view, the evaluation view): a quarter of float32's bytes through the workers' shared
memory, the pinned copy and the host-to-device copy. `model_input` normalises them on the
device, with the same float32 arithmetic as `to_tensor` (bit-identical on the CPU).

Every draw comes from the `random.Random` passed in, so a sample's views are a pure
function of (image, box, rng seed): the reader seeds it per sample, which is what makes a
resumed run see exactly the batches of an uninterrupted one.
"""
import functools
import math
import random
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """HWC uint8 PIL image -> CHW uint8, unnormalised."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


@functools.lru_cache(maxsize=None)
def _channel_stats(mean: Tuple[float, ...], std: Tuple[float, ...],
                   device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    # made once per device: a new tensor per call would be a host-to-device copy on every step
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1))


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 (x / 255 - mean) / std, on x's device."""
    if x.dtype != torch.uint8:  # float input would be normalised twice (and in place)
        raise TypeError(f"normalize takes uint8 views, got {x.dtype}")
    m, s = _channel_stats(tuple(mean), tuple(std), x.device)
    return x.float().div_(255.0).sub_(m).div_(s)


def to_tensor(img: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """HWC uint8 PIL image -> CHW float32, (x / 255 - mean) / std."""
    return normalize(to_uint8_tensor(img), mean, std)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto ``device`` without stalling it: pinned first where the copy goes to a
    GPU (a copy from pageable memory would wait for the device's queued work)."""
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def model_input(views: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A batch of views as the model takes it: on `device` in `dtype`. uint8 views (every
    reader's) are copied first and normalised there; float views are taken as already
    normalised."""
    views = to_device(views, device)
    if views.dtype == torch.uint8:
        views = normalize(views)
    return views.to(dtype)


def random_resized_crop_box(width: int, height: int, rng: random.Random,
                            scale: Tuple[float, float] = (0.2, 1.0),
                            ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """(left, top, right, bottom) of a crop with area in `scale` x image area and aspect
    ratio log-uniform in `ratio`; after 10 failed tries, the largest centred crop whose
    ratio is clamped to `ratio` (the rule of torchvision's RandomResizedCrop)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


Pixels = Union[Image.Image, torch.Tensor]  # a PIL image, or [3, H, W] uint8


def person_box_pixels(width: int, height: int,
                      box: Optional[Sequence[float]]) -> Optional[Tuple[int, int, int, int]]:
    """The person box in whole pixels (rounded outwards and clipped), or None when the box is
    null or degenerate (the person view is then the whole image)."""
    if box is None:
        return None
    x0, y0 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
    x1, y1 = min(width, int(math.ceil(box[2]))), min(height, int(math.ceil(box[3])))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1


def crop_person(img: Image.Image, box: Optional[Sequence[float]]) -> Image.Image:
    """The person crop (`person_box_pixels`); the image itself when there is none."""
    crop = person_box_pixels(img.width, img.height, box)
    return img if crop is None else img.crop(crop)


def image_tensor(img: Pixels) -> torch.Tensor:
    """[3, H, W] uint8 of an RGB PIL image (H x W x 3 in memory), or the tensor itself."""
    if isinstance(img, torch.Tensor):
        return img
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


Box = Tuple[int, int, int, int]  # left, top, right, bottom, in whole pixels
ViewDraw = Tuple[Box, bool]  # a view's crop box in the image, and whether it is flipped


def resized_crop(img: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """The ``box`` of ``img`` [3, H, W] uint8, resized to S x S by bicubic interpolation with
    antialiasing. On the CPU torch's uint8 kernel rounds and clips itself; elsewhere (a GPU has
    no uint8 kernel) it runs in float32, rounded and clipped after."""
    left, top, right, bottom = box
    crop = img[None, :, top:bottom, left:right]
    if img.device.type == "cpu":
        return F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    out = F.interpolate(crop.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


class ViewAugment:
    """RandomResizedCrop + horizontal flip of one view, [3, S, S] uint8 (normalised on the
    device by `model_input`): `draw` takes the random draws from the image's size alone, `apply`
    cuts the view, wherever the pixels are."""

    def __init__(self, size: int = 224, scale: Tuple[float, float] = (0.2, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5):
        self.size, self.scale, self.ratio, self.flip_p = size, scale, ratio, flip_p

    def draw(self, width: int, height: int, rng: random.Random) -> ViewDraw:
        box = random_resized_crop_box(width, height, rng, self.scale, self.ratio)
        return box, rng.random() < self.flip_p

    def apply(self, img: torch.Tensor, box: Box, flip: bool) -> torch.Tensor:
        out = resized_crop(img, box, self.size)
        return out.flip(-1) if flip else out

    def __call__(self, img: Pixels, rng: random.Random) -> torch.Tensor:
        img = image_tensor(img)
        return self.apply(img, *self.draw(img.shape[-1], img.shape[-2], rng))


class TwoViewTransform:
    """(scene view, person view) of one image, both [3, S, S] uint8 (see the module doc).
    `draw` gives both views' boxes in the whole image's pixels from its size alone (the person
    view's crop is drawn inside the person box), so the pixels may be decoded later elsewhere
    (the reader's ``decode_device``) and cut with the same draws."""

    def __init__(self, size: int = 224, scale: Tuple[float, float] = (0.2, 1.0)):
        self.augment = ViewAugment(size, scale)

    def draw(self, width: int, height: int, person_box: Optional[Sequence[float]], rng: random.Random,
             person: bool = True) -> Tuple[ViewDraw, Optional[ViewDraw]]:
        """(scene draw, person draw); the scene's draws come first, so ``person=False`` leaves
        the scene view as it is in the pair."""
        scene = self.augment.draw(width, height, rng)
        if not person:
            return scene, None
        x0, y0, x1, y1 = person_box_pixels(width, height, person_box) or (0, 0, width, height)
        (left, top, right, bottom), flip = self.augment.draw(x1 - x0, y1 - y0, rng)
        return scene, ((x0 + left, y0 + top, x0 + right, y0 + bottom), flip)

    def scene(self, img: Pixels, rng: random.Random) -> torch.Tensor:
        """The scene view alone; it equals the pair's scene view."""
        img = image_tensor(img)
        return self.augment.apply(img, *self.draw(img.shape[-1], img.shape[-2], None, rng, person=False)[0])

    def __call__(self, img: Pixels, person_box: Optional[Sequence[float]],
                 rng: random.Random) -> Tuple[torch.Tensor, torch.Tensor]:
        img = image_tensor(img)  # one decode for both crops
        scene, person = self.draw(img.shape[-1], img.shape[-2], person_box, rng)
        return self.augment.apply(img, *scene), self.augment.apply(img, *person)


class EvalTransform:
    """MAE's evaluation view: resize the short side to S / 0.875 (bicubic), centre crop S;
    [3, S, S] uint8 (normalised on the device by `model_input`)."""

    def __init__(self, size: int = 224, crop_pct: float = 0.875):
        self.size, self.resize = size, int(round(size / crop_pct))

    def __call__(self, img: Image.Image, rng: Optional[random.Random] = None) -> torch.Tensor:
        w, h = img.size
        s = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * s)), max(self.size, round(h * s))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return to_uint8_tensor(img.crop((left, top, left + self.size, top + self.size)))
