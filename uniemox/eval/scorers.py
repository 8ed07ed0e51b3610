"""What predict scores with: ``Scorer.score(scene, person, has_person) -> probabilities [B, C]``
over uint8 views [B, 3, S, S] (normalised on the device here; person = scene where no person was
found), from a fine-tuned classifier export or, zero-shot, from a pretraining export."""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from uniemox.data.prompts import EMOTION_TEMPLATE
from uniemox.data.transforms import model_input
from uniemox.errors import UserError

from .scores import to_probabilities

Score = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Scorer:
    score: Score
    classes: List[str]
    image_size: int
    multi_label: bool
    zero_shot: bool


def classifier_scorer(path: str, device: torch.device, person_view: bool) -> Scorer:
    """A fine-tuned model (RUN_DIR/best or any export in timm's layout). With the person view,
    the scene's and the person's probabilities are averaged where a person was found."""
    from uniemox.exports.hub import create_from_export

    model, config = create_from_export(path)
    if not config["num_classes"]:
        raise UserError(f"{path} is an encoder without a classification head: fine-tune it first "
                        f"(launch/finetune.py), or use --zero-shot with a pretraining export")
    model.to(device)
    multi = config["uniemox"].get("task") == "multi_label"

    def score(scene: torch.Tensor, person: torch.Tensor, has_person: torch.Tensor) -> torch.Tensor:
        p = to_probabilities(model(model_input(scene, device, torch.float32)), multi)
        if person_view and bool(has_person.any()):
            q = to_probabilities(model(model_input(person, device, torch.float32)), multi)
            p = torch.where(has_person.to(device)[:, None], (p + q) / 2, p)
        return p

    names = config.get("label_names") or [str(i) for i in range(config["num_classes"])]
    return Scorer(score, list(names), config["pretrained_cfg"]["input_size"][-1], multi, False)


def zero_shot_scorer(export: str, classes: Sequence[str], device: torch.device, person_view: bool,
                     teacher_model: Optional[str] = None, teacher_weights: Optional[str] = None,
                     teacher_pretrained: Optional[str] = None, templates: Sequence[str] = (EMOTION_TEMPLATE,)
                     ) -> Scorer:
    """The pretrained student's fused token against the teacher's prompt ensemble of each class
    (``templates``; softmax over classes). With the person view, the person crop is the fusion's
    B (no person: B is the scene, as in pretraining)."""
    from .zeroshot import build_zero_shot, image_size_of

    model, run_config = build_zero_shot(export, classes, device, teacher_model, teacher_weights, teacher_pretrained,
                                        templates)

    def score(scene: torch.Tensor, person: torch.Tensor, has_person: torch.Tensor) -> torch.Tensor:
        scene = model_input(scene, device, torch.float32)
        person = model_input(person, device, torch.float32) if person_view else None
        return torch.softmax(model(scene, person), dim=-1)

    return Scorer(score, list(classes), image_size_of(run_config), False, True)
