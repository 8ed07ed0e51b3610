"""The pretraining views decoded and cut on a device, batch by batch (the reader's ``decode_device``).

With ``decode_device`` set, a worker does not decode: it reads the image's header (its declared
size), takes the sample's random draws from that size alone (`TwoViewTransform.draw`: the same
draws, in the same order, as when it decodes) and ships the encoded bytes with the crop boxes and
flips. In the main process `DeviceViews` decodes the whole batch on the device (on CUDA, nvJPEG
through torchvision, batched) and cuts the views there: on the CPU the result is the workers'
views bit for bit; on a GPU the resize runs in float32 (no uint8 kernel there), at most a level
apart after rounding. An image that cannot be decoded leaves the batch (it is one sample short)
and is counted as ``corrupt_image`` by the loader, as a worker would have counted it.
"""
from collections import Counter
from typing import Dict, List

import torch

from .images import decode_batch
from .transforms import ViewAugment, ViewDraw


def view_draws(view: str, draw: ViewDraw) -> Dict:
    """A view's draws as sample fields, collated into ``{view}_crop`` [B, 4] and ``{view}_flip`` [B]."""
    box, flip = draw
    return {f"{view}_crop": torch.tensor(box, dtype=torch.int64), f"{view}_flip": flip}


class DeviceViews:
    """Batches of encoded images + draws -> the reader's batches, views [B, 3, S, S] uint8 on ``device``."""

    def __init__(self, size: int, device: str):
        self.augment, self.device = ViewAugment(size), torch.device(device)

    def __call__(self, batch: Dict, counters: Counter) -> Dict:
        images = decode_batch(batch.pop("encoded"), self.device)
        keep = [i for i, img in enumerate(images) if img is not None]
        counters["corrupt_image"] += len(images) - len(keep)
        draws = {view: (batch.pop(f"{view}_crop").tolist(), batch.pop(f"{view}_flip").tolist())
                 for view in ("scene", "person") if f"{view}_crop" in batch}
        if len(keep) < len(images):
            batch = {name: _take(value, keep) for name, value in batch.items()}
        size = self.augment.size
        for view, (boxes, flips) in draws.items():
            views = [self.augment.apply(images[i], tuple(boxes[i]), flips[i]) for i in keep]
            batch[view] = torch.stack(views) if views else torch.empty(0, 3, size, size, dtype=torch.uint8,
                                                                        device=self.device)
        return batch


def _take(value, keep: List[int]):
    if isinstance(value, torch.Tensor):
        return value[keep]
    return [value[i] for i in keep] if isinstance(value, list) else value
