"""Images decoded one way everywhere (shard writer, reader, evaluation views, predict): 8-bit RGB.

Pillow's ``convert("RGB")`` clips a 16-bit grayscale PNG (mode ``I;16``, values 0-65535) to
255 almost everywhere; its range is scaled onto 8 bits here instead (the high byte), as Pillow
itself does for 16-bit RGB.

Every image is judged by the size its header DECLARES before a pixel is decoded
(`check_declared_size`): a 300 KB PNG may declare 12000 x 12000 pixels and cost gigabytes to
decode. Over ``UNIEMOX_MAX_IMAGE_PIXELS`` (default `DEFAULT_MAX_PIXELS`, any mode and format) it
is refused with `OversizedImage`, which readers count as ``oversized_image``.
"""
import io
import os

import numpy as np
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
