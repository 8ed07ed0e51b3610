"""The classes each known dataset has, their one label order, and matching a source against them.

Label order: the classes of a preset in alphabetical order, which is torchvision's ImageFolder
order and so the order of the release's fine-tuned heads (it read every downstream set with
ImageFolder). The 8 Mikels emotions get this one order in FI, Emo8 and EmoSet alike, so a
model fine-tuned on one is scored on another without remapping; EmoSet's own info.json order
(amusement, awe, contentment, excitement, anger, ...) is remapped to it.

Names are matched case-insensitively (CAER-S and HECO folders are capitalised) and through a
few spellings users report (CAER-S has ``Angry`` in some copies, ``Anger`` in others); the
manifest records each class as the dataset spells it.
"""
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import UserError
from .prompts import MIKELS_EMOTIONS

EMOTIC_CATEGORIES = (
    "Affection", "Anger", "Annoyance", "Anticipation", "Aversion", "Confidence", "Disapproval",
    "Disconnection", "Disquietment", "Doubt/Confusion", "Embarrassment", "Engagement", "Esteem",
    "Excitement", "Fatigue", "Fear", "Happiness", "Pain", "Peace", "Pleasure", "Sadness",
    "Sensitivity", "Suffering", "Surprise", "Sympathy", "Yearning")

KNOWN_CLASSES: Dict[str, Tuple[str, ...]] = {
    "emo8": MIKELS_EMOTIONS,
    "fi": MIKELS_EMOTIONS,
    "emoset": MIKELS_EMOTIONS,
    "emotion6": ("anger", "disgust", "fear", "joy", "sadness", "surprise"),
    "ube": ("anger", "fear", "joy", "love", "sadness", "surprise"),
    "caer-s": ("anger", "disgust", "fear", "happy", "neutral", "sad", "surprise"),
    "heco": ("anger", "disgust", "excitement", "fear", "happiness", "peace", "sadness", "surprise"),
    "emotic": EMOTIC_CATEGORIES,
}
# Other spellings of a class, by dataset (lower case -> the preset's name).
SPELLINGS: Dict[str, Dict[str, str]] = {"caer-s": {"angry": "anger", "happiness": "happy", "sadness": "sad"}}

MIKELS_ORDER = ("the 8 Mikels emotions in alphabetical order (" + ", ".join(MIKELS_EMOTIONS) +
                "), one order for FI, Emo8 and EmoSet (torchvision ImageFolder's, as the release's heads)")


def known_classes(dataset: str) -> Optional[Tuple[str, ...]]:
    return KNOWN_CLASSES.get(dataset)


def label_order(dataset: str, custom: str = "sorted class names") -> str:
    """The sentence the manifest states about its label order."""
    classes = KNOWN_CLASSES.get(dataset)
    if classes is MIKELS_EMOTIONS:
        return MIKELS_ORDER
    if dataset == "emotic":
        return "the 26 EMOTIC categories in the order of the EMOTIC paper (alphabetical)"
    if classes:
        return f"{dataset}'s {len(classes)} classes in alphabetical order (torchvision ImageFolder's)"
    return custom


def _canonical(dataset: str, name: str) -> str:
    low = name.strip().lower()
    return SPELLINGS.get(dataset, {}).get(low, low)


def match_classes(dataset: str, found: Iterable[str], where: str, exact: bool = True) -> List[str]:
    """The preset's classes in its label order, each as `found` spells it (the preset's own name
    where the source lacks it and `exact` is False). A source with a class the preset does not
    have, or (exact) without one it has, is refused: wrong labels must never be written."""
    classes = KNOWN_CLASSES[dataset]
    index = {c.lower(): i for i, c in enumerate(classes)}
    spelled: Dict[int, str] = {}
    unknown = []
    for name in sorted(set(found)):
        i = index.get(_canonical(dataset, name))
        if i is None:
            unknown.append(name)
        elif spelled.setdefault(i, name) != name:
            raise UserError(f"{where}: classes {spelled[i]!r} and {name!r} are the same {dataset} class")
    missing = [classes[i] for i in range(len(classes)) if i not in spelled]
    if unknown or (exact and missing):
        found_text = ", ".join(sorted(set(found))) or "none"
        raise UserError(f"{where}: these are not the {len(classes)} {dataset} classes ({', '.join(classes)}); "
                        f"found {found_text}" + (f" (missing {', '.join(missing)})" if exact and missing else "") +
                        ": point at the folder that holds the class folders, or use --dataset custom")
    return [spelled.get(i, c) for i, c in enumerate(classes)]


def class_index(classes: Sequence[str], name: str, where: str, dataset: str = "") -> int:
    """Index of `name` in `classes`, case-insensitively and through the dataset's other spellings."""
    lookup = {_canonical(dataset, c): i for i, c in enumerate(classes)}
    i = lookup.get(_canonical(dataset, str(name)))
    if i is None:
        raise UserError(f"{where}: unknown label {name!r} (known: {', '.join(classes)})")
    return i
