"""Data: shard writing and reading, views, prompts, person detection, the sample dataset.

Knows nothing of models.
"""
from .prompts import MIKELS_EMOTIONS, build_prompt, emotion_prompt

__all__ = ["MIKELS_EMOTIONS", "build_prompt", "emotion_prompt"]
