"""Images decoded one way everywhere (shard writer, reader, evaluation views, predict): 8-bit RGB.

Pillow's ``convert("RGB")`` clips a 16-bit grayscale PNG (mode ``I;16``, values 0-65535) to
255 almost everywhere; its range is scaled onto 8 bits here instead (the high byte), as Pillow
itself does for 16-bit RGB.
"""
import io

import numpy as np
from PIL import Image


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img).astype(np.int64).clip(min=0)
        bits = 16 if img.mode.startswith("I;16") or values.max() < 1 << 16 else 32
        img = Image.fromarray((values >> (bits - 8)).astype(np.uint8), "L")
    return img.convert("RGB")


def decode_image(data: bytes) -> Image.Image:
    """RGB of encoded image bytes (fully decoded: a damaged file fails here)."""
    with Image.open(io.BytesIO(data)) as img:
        return to_rgb(img)
