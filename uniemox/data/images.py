"""Images decoded one way everywhere (shard writer, reader, evaluation views, predict): 8-bit RGB.

Pillow's ``convert("RGB")`` clips a 16-bit grayscale PNG (mode ``I;16``, values 0-65535) to
255 almost everywhere; its range is scaled onto 8 bits here instead (the high byte), as Pillow
itself does for 16-bit RGB.

`decode_image_tensor` gives the same pixels as a uint8 tensor (the pretraining reader's path:
a JPEG decoded by libjpeg-turbo without a PIL image), `decode_batch` a batch of them on a device.
"""
import functools
import io
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

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
