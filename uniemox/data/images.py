"""Images decoded one way everywhere (shard writer, reader, evaluation views, predict): 8-bit RGB.

Pillow's ``convert("RGB")`` clips a 16-bit grayscale PNG (mode ``I;16``, values 0-65535) to
255 almost everywhere; its range is scaled onto 8 bits here instead (the high byte), as Pillow
itself does for 16-bit RGB.
"""
import io

import numpy as np
import torch
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


def decode_image_tensor(data: bytes) -> torch.Tensor:
    """The pixels of `decode_image` as a [3, H, W] uint8 tensor whose memory is H x W x 3 (the
    channels-last layout torch's uint8 resize kernels are fastest on). A JPEG in RGB or grayscale
    is decoded by torchvision's libjpeg-turbo straight into the tensor, with no PIL image in
    between (the same pixels as Pillow's, bit for bit: both call libjpeg-turbo with its defaults);
    every other image goes through `decode_image`."""
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            from torchvision.io import ImageReadMode, decode_jpeg

            try:  # a bytearray: torch warns on (and must not alias) the immutable bytes object
                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            except RuntimeError:
                pass  # what libjpeg-turbo refuses, Pillow decodes or refuses below: one verdict on damage
        return torch.from_numpy(np.array(to_rgb(img))).permute(2, 0, 1)
