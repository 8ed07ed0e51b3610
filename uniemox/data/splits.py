"""Seeded, reproducible train/val/test splits of METHOD §5, one preset per dataset.

A split is drawn per group (a class, or a (class, sub-folder) pair for UnBiasedEmo):
the group's items are sorted by path, shuffled with ``random.Random(f"{seed}:{group}")``
(independent of the order groups are visited and of PYTHONHASHSEED), then cut as
``n_train = round(n * r_train)``, ``n_val = round(n * r_val)``, the rest test.
"""
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from ..errors import UserError

SPLITS = ("train", "val", "test")
T = TypeVar("T")


@dataclass(frozen=True)
class SplitPreset:
    """How a dataset is split.

    ratios: train/val/test fractions for data that comes without splits (None: the
        dataset must provide its own train/val/test folders or files).
    seed: the split seed (Emotion6's release uses 42).
    group: "class" or "class+subfolder" (UnBiasedEmo).
    resplit_test: (val, test) fractions applied to the official test split (CAER-S has
        only train/test; the release cuts its test into 34% val / 66% test).
    """

    ratios: Optional[Tuple[float, float, float]] = (0.8, 0.1, 0.1)
    seed: int = 0
    group: str = "class"
    resplit_test: Optional[Tuple[float, float]] = None


PRESETS: Dict[str, SplitPreset] = {
    "emo8": SplitPreset(ratios=None),
    "fi": SplitPreset(ratios=(0.80, 0.05, 0.15)),
    "emotion6": SplitPreset(ratios=(0.70, 0.10, 0.20), seed=42),
    "ube": SplitPreset(ratios=(0.70, 0.10, 0.20), group="class+subfolder"),
    "caer-s": SplitPreset(ratios=None, resplit_test=(0.34, 0.66)),
    "heco": SplitPreset(ratios=(0.70, 0.10, 0.20)),
    "emoset": SplitPreset(ratios=None),
    "emotic": SplitPreset(ratios=None),
    "custom": SplitPreset(),
}
ALIASES = {"unbiasedemo": "ube", "caers": "caer-s", "caer_s": "caer-s", "emo-8": "emo8"}


def get_preset(dataset: str, ratios: Optional[Sequence[float]] = None,
               seed: Optional[int] = None) -> SplitPreset:
    """The preset of a dataset name (unknown names get the 'custom' rule), with overrides."""
    name = ALIASES.get(dataset.lower(), dataset.lower())
    preset = PRESETS.get(name, PRESETS["custom"])
    if ratios is not None:
        ratios = tuple(float(r) for r in ratios)
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise UserError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
        preset = SplitPreset(ratios, preset.seed, preset.group, preset.resplit_test)
    if seed is not None:
        preset = SplitPreset(preset.ratios, int(seed), preset.group, preset.resplit_test)
    return preset


def cut_counts(n: int, fractions: Sequence[float]) -> List[int]:
    """Sizes of consecutive parts of n items: rounded, the last part takes the remainder."""
    counts = [int(round(n * f)) for f in fractions[:-1]]
    while sum(counts) > n:  # rounding up can overshoot on tiny groups
        counts[counts.index(max(counts))] -= 1
    return counts + [n - sum(counts)]


def seeded_split(items: Sequence[T], group_of: Callable[[T], str], sort_key: Callable[[T], str],
                 fractions: Sequence[float], names: Sequence[str], seed: int) -> Dict[str, List[T]]:
    """Split items per group into parts called `names` with the given fractions (see module doc)."""
    groups: Dict[str, List[T]] = defaultdict(list)
    for item in items:
        groups[group_of(item)].append(item)
    out: Dict[str, List[T]] = {name: [] for name in names}
    for group in sorted(groups):
        members = sorted(groups[group], key=sort_key)
        random.Random(f"{seed}:{group}").shuffle(members)
        start = 0
        for name, count in zip(names, cut_counts(len(members), fractions)):
            out[name].extend(members[start:start + count])
            start += count
    return out
