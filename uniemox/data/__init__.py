"""Data: shard writing and reading, views, prompts, person detection, the sample dataset.

Knows nothing of models. Heavy optional parts (detectors, the shard writer) are imported
from their modules (uniemox.data.detector, uniemox.data.writer) only where needed.
"""
from .manifest import load_manifest, shard_urls, verify_shards
from .prompts import MIKELS_EMOTIONS, build_prompt, emotion_prompt
from .loader import ShardLoader, build_labeled_loader, build_pretrain_loader
from .reader import ReaderConfig, epoch_size, expand_urls
from .sample import ensure_sample_shards, write_sample_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, TwoViewTransform

__all__ = ["MIKELS_EMOTIONS", "build_prompt", "emotion_prompt", "build_pretrain_loader",
           "build_labeled_loader", "ShardLoader", "ReaderConfig", "epoch_size", "expand_urls", "shard_urls", "load_manifest",
           "verify_shards", "ensure_sample_shards", "write_sample_dataset",
           "TwoViewTransform", "IMAGENET_MEAN", "IMAGENET_STD"]
