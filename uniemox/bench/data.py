"""Where the step benchmark's batches come from, and the per-step masking noise.

* ``synthetic``: a few random image batches made once (pinned on CUDA) and cycled, with
  prompts built per step by the caption template (docs/method.md#pretraining).
  ``prompt_pool=0`` (default) makes every prompt of the run distinct, so the teacher's prompt
  cache never hits (the cautious case for ``ours``); ``prompt_pool=N`` draws prompts from N
  distinct ones (e.g. 8: the emotion-only captions of datasets without attributes, where the
  cache always hits).
* ``shards``: the real reader (``uniemox.data.build_pretrain_loader``) over
  WebDataset shards, resampled so it never ends; decoding and augmentation happen in its
  workers, so the data-loading share of the step is real.
"""
import itertools
import os
import random
from typing import Dict, Iterator, List, Optional, Sequence, Union

import torch

from uniemox.data import MIKELS_EMOTIONS, build_prompt
from uniemox.errors import UserError

DATA_SOURCES = ("synthetic", "shards")
_SCENES = ("beach", "street", "forest", "stadium", "kitchen", "mountain range", "night sky", "garden")
_OBJECTS = ("dog", "car", "tree", "crowd", "balloon", "umbrella", "fire", "flower", "cat", "flag")
POOL_BATCHES = 4  # distinct synthetic image batches, cycled


def synthetic_prompt(i: int) -> str:
    """The ``i``-th synthetic caption; distinct ``i`` give distinct captions."""
    rng = random.Random(i)
    attrs = {"scene": rng.choice(_SCENES), "object": rng.sample(_OBJECTS, 2),
             "brightness": round(0.1 + (i % 9973) / 9973 * 0.8, 4), "colorfulness": i}
    return build_prompt(MIKELS_EMOTIONS[i % len(MIKELS_EMOTIONS)], attrs)


def synthetic_batches(batch: int, image_size: int, device: torch.device, prompt_pool: int = 0,
                      seed: int = 0) -> Iterator[Dict]:
    """Endless batches {scene, person: [B, 3, S, S] uint8 on the host, as the pretraining reader
    delivers them, text: B prompts}."""
    gen = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (2, batch, 3, image_size, image_size), generator=gen, dtype=torch.uint8)
              for _ in range(POOL_BATCHES)]
    if device.type == "cuda":
        images = [x.pin_memory() for x in images]  # as a loader with pin_memory=True delivers them
    for step in itertools.count():
        views = images[step % POOL_BATCHES]
        ids = range(step * batch, (step + 1) * batch)
        texts = [synthetic_prompt(i % prompt_pool if prompt_pool else i) for i in ids]
        yield {"scene": views[0], "person": views[1], "text": texts}


def shard_batches(shards: Optional[Union[str, Sequence[str]]], batch: int, image_size: int,
                  workers: int, device: torch.device, seed: int = 0) -> Iterator[Dict]:
    """Endless batches from shards (default: the embedded sample set's training split)."""
    from uniemox.data import build_pretrain_loader

    urls = resolve_shards(shards)
    loader = build_pretrain_loader(urls, batch_size=batch, num_workers=workers, image_size=image_size,
                                   shuffle_buffer=min(1000, 4 * batch), seed=seed, resampled=True,
                                   pin_memory=device.type == "cuda")
    return iter(loader)


def resolve_shards(shards: Union[None, str, Sequence[str]]) -> List[str]:
    """None: the embedded sample set; a folder with a manifest: its train split (pretraining
    never reads a test split); else the reader's own forms (brace pattern, '::'-separated)."""
    from uniemox.data import shard_urls
    from uniemox.data.reader import expand_urls

    if not shards:
        return default_shards()
    if isinstance(shards, str) and os.path.isdir(shards):
        return shard_urls(shards, ("train",))
    return expand_urls(shards)


def default_shards() -> List[str]:
    """The embedded SYNTHETIC sample set (built once, cached): small images, so its decoding
    is cheaper than a real dataset's; pass --shards for real data."""
    from uniemox.data import ensure_sample_shards, shard_urls

    return shard_urls(ensure_sample_shards(), ("train",))


def make_batches(source: str, batch: int, image_size: int, device: torch.device, *, prompt_pool: int = 0,
                 shards=None, workers: int = 2, seed: int = 0) -> Iterator[Dict]:
    if source == "synthetic":
        return synthetic_batches(batch, image_size, device, prompt_pool, seed)
    if source == "shards":
        return shard_batches(shards, batch, image_size, workers, device, seed)
    raise UserError(f"--data must be one of {', '.join(DATA_SOURCES)}, got {source!r}")


def masking_noise(step: int, batch: int, patches: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """[2, B, L] uniform noise (scene, person) for MAE's random masking, drawn on the host from
    (seed, step) as the trainer does, so both variants mask the same patches at each step."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.rand(2, batch, patches, generator=gen).to(device, non_blocking=True)
