"""The caption template of docs/method.md#pretraining, built from a sample's attributes and emotion label.

Parts are joined by spaces; absent attributes are skipped; the emotion sentence is
always present. EmoSet's attribute names are accepted as they are in its annotations
(scene, object, brightness, colorfulness, facial_expression, human_action).
"""
import os
from typing import Mapping, Optional, Sequence, Tuple, Union

from uniemox.errors import UserError

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


EMOTION_TEMPLATE = "The overall emotion conveyed is {}."  # docs/method.md#pretraining: emotion sentence

# Zero-shot prompt sets (open_clip's templates: "{}" is where the class name goes). "method": the
# caption's own sentence, what teachers are trained on; "emotion": phrasings of the same question
# for a prompt ensemble (CLIP's practice: each class is the mean of its prompts' embeddings).
TEMPLATE_SETS = {
    "method": (EMOTION_TEMPLATE,),
    "emotion": (
        EMOTION_TEMPLATE,
        "A photo that evokes {}.",
        "An image that conveys {}.",
        "A picture that makes people feel {}.",
        "The mood of this photo is {}.",
        "This image expresses {}.",
        "A scene full of {}.",
        "The feeling of {} in a photo.",
    ),
}


def emotion_prompt(emotion: str) -> str:
    return EMOTION_TEMPLATE.format(emotion)


def _one_slot(template: str) -> bool:
    """str.format fills exactly one "{}" and nothing else (as open_clip's builder will call it)."""
    try:
        return template.count("{}") == 1 and template.format("\0") == template.replace("{}", "\0")
    except (IndexError, KeyError, ValueError):
        return False


def load_templates(spec: str) -> Tuple[str, ...]:
    """A named set of TEMPLATE_SETS, or a text file of templates: one a line, each with one "{}"
    where the class name goes (blank lines and lines starting with # are skipped)."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    if not os.path.isfile(spec):
        raise UserError(f"templates {spec!r}: neither a template set ({', '.join(TEMPLATE_SETS)}) nor a file")
    with open(spec, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    bad = [line for line in lines if not _one_slot(line)]
    if not lines or bad:
        raise UserError(f"templates file {spec}: " + (f"each line needs one {{}} for the class name (and no other "
                                                      f"braces), not {bad[0]!r}" if bad else "no template in it"))
    return tuple(lines)


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
