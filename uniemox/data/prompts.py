"""The caption template of METHOD §1, built from a sample's attributes and emotion label.

Parts are joined by spaces; absent attributes are skipped; the emotion sentence is
always present. EmoSet's attribute names are accepted as they are in its annotations
(scene, object, brightness, colorfulness, facial_expression, human_action).
"""
from typing import Mapping, Optional, Sequence, Union

MIKELS_EMOTIONS = ("amusement", "anger", "awe", "contentment",
                   "disgust", "excitement", "fear", "sadness")


def _join_objects(objects: Union[str, Sequence[str]]) -> str:
    if isinstance(objects, str):
        return objects
    objects = [str(o) for o in objects if str(o).strip()]
    if len(objects) <= 1:
        return "".join(objects)
    return ", ".join(objects[:-1]) + " and " + objects[-1]


def _present(value) -> bool:
    if value is None:
        return False
    if isinstance(value, (list, tuple)):
        return any(str(v).strip() for v in value)
    return bool(str(value).strip())


def _fmt(value) -> str:
    """EmoSet stores brightness/colorfulness as numbers; print them compactly."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def emotion_prompt(emotion: str) -> str:
    return f"The overall emotion conveyed is {emotion}."


def build_prompt(emotion: str, attributes: Optional[Mapping] = None) -> str:
    """Caption for one sample, e.g.
    "The scene type of this photo is beach. The main subjects are dog and ball. ...
    The overall emotion conveyed is amusement."
    """
    attrs = dict(attributes or {})
    parts = []
    if _present(attrs.get("scene")):
        parts.append(f"The scene type of this photo is {_fmt(attrs['scene'])}.")
    objects = attrs.get("object", attrs.get("objects"))
    if _present(objects):
        parts.append(f"The main subjects are {_join_objects(objects)}.")
    if _present(attrs.get("brightness")):
        parts.append(f"The image has a brightness of {_fmt(attrs['brightness'])}")
    if _present(attrs.get("colorfulness")):
        parts.append(f"and color saturation of {_fmt(attrs['colorfulness'])}.")
    elif _present(attrs.get("brightness")):
        parts[-1] += "."  # the brightness sentence must still end
    if _present(attrs.get("facial_expression")):
        parts.append(f"Human facial expression is {_fmt(attrs['facial_expression'])}.")
    if _present(attrs.get("human_action")):
        parts.append(f"The action being performed is {_fmt(attrs['human_action'])}.")
    parts.append(emotion_prompt(emotion))
    return " ".join(parts)


def shorten_captions(texts: Sequence[str], prob: float, generator) -> list:
    """Cut each caption to its emotion sentence with probability ``prob`` (caption augmentation
    for teacher training: the emotion sentence alone is the zero-shot prompt). ``generator``: a
    torch.Generator seeded per micro-batch, so a resumed run makes the same choices."""
    import torch

    texts = list(texts)
    if prob <= 0:
        return texts
    marker = emotion_prompt("{}").split("{}")[0]
    draws = torch.rand(len(texts), generator=generator).numpy()  # a host draw: nothing to synchronise
    return [t[t.rfind(marker):] if d < prob and marker in t else t for t, d in zip(texts, draws)]
