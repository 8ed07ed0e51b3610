"""Seeded, reproducible train/val/test splits of docs/method.md#fine-tuning, one preset per dataset.

A split is drawn per group (a class, or a (class, sub-folder) pair for UnBiasedEmo):
the group's items are sorted by path, shuffled with ``random.Random(f"{seed}:{group}")``
(independent of the order groups are visited and of PYTHONHASHSEED), then cut with the
release's own counting (its ``datasets/data_partition.py``), so each split has the size the
release's had:

* ``int``: ``n_train = int(n * r_train)``, ``n_val = int(n * r_val)``, the rest test (FI, HECO,
  UnBiasedEmo; CAER-S's official test keeps ``int(n * 0.66)`` as test, the rest is val);
* ``sklearn``: Emotion6's two ``train_test_split`` calls, ``n_train = floor(n * 0.7)``, then
  ``n_val = floor(rest * (0.1 / (0.1 + 0.2)))`` of the rest, the rest test.

The release shuffled without a seed (Emotion6: in os.listdir order), so no drawn split can
reproduce its membership, only its sizes; its own split folders are the only way to its splits.
"""
import math
import random
from collections import defaultdict
from dataclasses import dataclass, replace
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
    resplit_test: the fraction of an official test split that stays test when a dataset comes
        with train/ and test/ only; the rest becomes val (CAER-S: the release keeps 66%).
    rule: how sizes are counted, "int" or "sklearn" (module doc).
    """

    ratios: Optional[Tuple[float, float, float]] = (0.8, 0.1, 0.1)
    seed: int = 0
    group: str = "class"
    resplit_test: Optional[float] = None
    rule: str = "int"


PRESETS: Dict[str, SplitPreset] = {
    "emo8": SplitPreset(ratios=None),
    "fi": SplitPreset(ratios=(0.80, 0.05, 0.15)),
    "emotion6": SplitPreset(ratios=(0.70, 0.10, 0.20), seed=42, rule="sklearn"),
    "ube": SplitPreset(ratios=(0.70, 0.10, 0.20), group="class+subfolder"),
    "caer-s": SplitPreset(ratios=None, resplit_test=0.66),
    "heco": SplitPreset(ratios=(0.70, 0.10, 0.20)),
    "emoset": SplitPreset(ratios=None),
    "emotic": SplitPreset(ratios=None),
    "custom": SplitPreset(),
}
ALIASES = {"unbiasedemo": "ube", "caers": "caer-s", "caer_s": "caer-s", "emo-8": "emo8"}


def preset_name(dataset: str) -> str:
    """The preset a --dataset name means ('UnBiasedEmo' -> 'ube'); unknown names pass through."""
    return ALIASES.get(dataset.lower(), dataset.lower())


def get_preset(dataset: str, ratios: Optional[Sequence[float]] = None,
               seed: Optional[int] = None) -> SplitPreset:
    """The preset of a dataset name (unknown names get the 'custom' rule), with overrides."""
    preset = PRESETS.get(preset_name(dataset), PRESETS["custom"])
    if ratios is not None:
        ratios = tuple(float(r) for r in ratios)
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise UserError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
        preset = replace(preset, ratios=ratios)
    if seed is not None:
        preset = replace(preset, seed=int(seed))
    return preset


def cut_counts(n: int, fractions: Sequence[float], rule: str = "int") -> List[int]:
    """Sizes of consecutive parts of n items, counted as the release counted (module doc)."""
    if rule == "sklearn":  # train_test_split(train_size=f0), then of the rest train_size=f1/(f1+f2)
        first = math.floor(fractions[0] * n)
        second = math.floor((n - first) * (fractions[1] / (fractions[1] + fractions[2])))
        return [first, second, n - first - second]
    counts = [int(n * f) for f in fractions[:-1]]  # the release's int(): never more than n
    return counts + [n - sum(counts)]


def seeded_split(items: Sequence[T], group_of: Callable[[T], str], sort_key: Callable[[T], str],
                 fractions: Sequence[float], names: Sequence[str], seed: int,
                 rule: str = "int") -> Dict[str, List[T]]:
    """Split items per group into parts called `names` with the given fractions (see module doc)."""
    groups: Dict[str, List[T]] = defaultdict(list)
    for item in items:
        groups[group_of(item)].append(item)
    out: Dict[str, List[T]] = {name: [] for name in names}
    for group in sorted(groups):
        members = sorted(groups[group], key=sort_key)
        random.Random(f"{seed}:{group}").shuffle(members)
        start = 0
        for name, count in zip(names, cut_counts(len(members), fractions, rule)):
            out[name].extend(members[start:start + count])
            start += count
    return out
