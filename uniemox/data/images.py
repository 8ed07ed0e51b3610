"""Images decoded one way everywhere (shard writer, reader, evaluation views, predict): 8-bit RGB.

Pillow's ``convert("RGB")`` clips a 16-bit grayscale PNG (mode ``I;16``, values 0-65535) to
255 almost everywhere; its range is scaled onto 8 bits here instead (the high byte), as Pillow
itself does for 16-bit RGB.

Every image is judged by the size its header DECLARES before a pixel is decoded
(`check_declared_size`): a 300 KB PNG may declare 12000 x 12000 pixels and cost gigabytes to
decode. Over ``UNIEMOX_MAX_IMAGE_PIXELS`` (default `DEFAULT_MAX_PIXELS`, any mode and format) it
is refused with `OversizedImage`, which readers count as ``oversized_image``.

`decode_image_tensor` gives the same pixels as a uint8 tensor (the pretraining reader's path:
a JPEG decoded by libjpeg-turbo without a PIL image), `decode_batch` a batch of them on a device.
"""
import functools
import io
import os
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

MAX_PIXELS_ENV = "UNIEMOX_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000: a 60 MP camera passes; decoded RGB ~192 MB


class OversizedImage(ValueError):
    """An image whose declared size is over the limit (skipped like a corrupt image)."""


def max_image_pixels() -> int:
    """The limit: ``UNIEMOX_MAX_IMAGE_PIXELS`` (a positive integer) or the default."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw)) if "e" in raw.lower() else int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{MAX_PIXELS_ENV} must be a positive number of pixels, got {raw!r}")
    return value


def set_max_image_pixels(pixels: int) -> None:
    """Raise (or lower) the limit for this process and every process it starts (the environment
    is inherited: shard-writing and DataLoader workers)."""
    if pixels < 1:
        raise UserError(f"the image size limit must be a positive number of pixels, got {pixels}")
    os.environ[MAX_PIXELS_ENV] = str(pixels)


def check_declared_size(img: Image.Image) -> Image.Image:
    """``img`` (just opened, not yet decoded) when its declared width x height is within the
    limit; else `OversizedImage`."""
    w, h = img.size
    limit = max_image_pixels()
    if w * h > limit:
        raise OversizedImage(f"declares {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} "
                             f"(raise it with {MAX_PIXELS_ENV})")
    return img


def skip_kind(exc: Exception) -> str:
    """The counter an image that failed to decode is skipped under."""
    return "oversized_image" if isinstance(exc, OversizedImage) else "corrupt_image"


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img)
        if img.mode.startswith("I;16") or values.max() < 1 << 16:
            # 16-bit: the high byte (uint16 >> 8 stays 2 bytes a pixel, no 8-byte copy)
            values = (values.clip(min=0) >> 8).astype(np.uint8)
        else:
            values = (values.clip(min=0) >> 24).astype(np.uint8)
        img = Image.fromarray(values, "L")
    return img.convert("RGB")


def decode_image(data: bytes) -> Image.Image:
    """RGB of encoded image bytes (fully decoded: a damaged file fails here; an oversized one
    before decoding)."""
    with Image.open(io.BytesIO(data)) as img:
        return to_rgb(check_declared_size(img))


@dataclass(frozen=True)
class EncodedImage:
    """An image opened (its header read) but not decoded: its bytes and declared size, for a
    reader that decodes a whole batch later on a device (`decode_batch`)."""
    data: bytes
    width: int
    height: int


def decode_image_tensor(data: bytes, defer: bool = False) -> Union[torch.Tensor, EncodedImage]:
    """The pixels of `decode_image` as a [3, H, W] uint8 tensor whose memory is H x W x 3 (the
    channels-last layout torch's uint8 resize kernels are fastest on). A JPEG in RGB or grayscale
    is decoded by torchvision's libjpeg-turbo straight into the tensor, with no PIL image in
    between (the same pixels as Pillow's, bit for bit: both call libjpeg-turbo with its defaults);
    every other image goes through Pillow, as `decode_image`. ``defer``: the header only, as an
    `EncodedImage`."""
    with Image.open(io.BytesIO(data)) as img:
        check_declared_size(img)
        if defer:
            return EncodedImage(data, img.width, img.height)
        decode_jpeg = _jpeg_decoder()
        if decode_jpeg is not None and img.format == "JPEG" and img.mode in ("RGB", "L"):
            try:
                return decode_jpeg(_byte_tensor(data))
            except RuntimeError:
                pass  # what libjpeg-turbo refuses, Pillow decodes or refuses below: one verdict on damage
        return torch.from_numpy(np.array(to_rgb(img))).permute(2, 0, 1)


def decode_batch(encoded: Sequence[bytes], device: torch.device) -> List[Optional[torch.Tensor]]:
    """[3, H, W] uint8 on ``device`` per image, None for one that cannot be decoded. The JPEGs are
    decoded together by torchvision on ``device`` (on CUDA: nvJPEG, batched); the rest, and every
    JPEG of a batch that fails (one damaged file fails them all), one by one by
    `decode_image_tensor` on the CPU."""
    out: List[Optional[torch.Tensor]] = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if data[:3] == b"\xff\xd8\xff"]
    decode_jpeg = _jpeg_decoder()
    if jpegs and decode_jpeg is not None:
        try:
            for i, img in zip(jpegs, decode_jpeg([_byte_tensor(encoded[i]) for i in jpegs], device=device)):
                out[i] = img
        except RuntimeError:
            pass
    for i, data in enumerate(encoded):
        if out[i] is None:
            try:
                out[i] = decode_image_tensor(data).to(device)
            except Exception:  # damaged: the caller counts and skips it
                pass
    return out


def _byte_tensor(data: bytes) -> torch.Tensor:
    # a bytearray: torch warns on (and must not alias) the immutable bytes object
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@functools.lru_cache(maxsize=None)
def _jpeg_decoder():
    """torchvision's JPEG decoder (libjpeg-turbo on the CPU, nvJPEG on CUDA) to RGB, or None where
    this torchvision has none (its image codecs are deprecated since 0.29 in favour of TorchCodec):
    Pillow then decodes every image."""
    # said at every call by torchvision 0.29 (once per worker process): a note for this module's maintainers
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    return functools.partial(decode_jpeg, mode=ImageReadMode.RGB)
