"""Zero-shot emotion recognition with a pretrained UniEmoX student (no fine-tuning).

Pretraining pulls the fused token gamma = Fusion(alpha, beta) towards the teacher's image
embedding and makes its similarities to caption embeddings match the teacher's, so gamma
lives in the teacher's text space. A class c is scored by the teacher's embeddings of prompts
of its name (open_clip's zero-shot classifier: the normalised mean over the templates t_k, by
default the caption template's emotion sentence "The overall emotion conveyed is {c}." alone):

    w_c = normalise(mean_k normalise(teacher.encode_text(t_k(c))))
    g   = normalise(gamma(image))      alpha = P(LN(cls(scene))), beta = P(LN(cls(person)))
    p(c | image) = softmax_c(s * <g, w_c>),   s = the teacher's logit scale

The encoder runs unmasked (MAE's evaluation practice). Without a person view, B is the whole
image (pretraining's rule when no person is found).
"""
import logging
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from uniemox.data.prompts import EMOTION_TEMPLATE
from uniemox.exports.pretrain import read_pretrain_export
from uniemox.errors import UserError

logger = logging.getLogger(__name__)


def build_teacher(run_config: Dict, device: torch.device, model: Optional[str] = None,
                  weights: Optional[str] = None, pretrained: Optional[str] = None):
    """The pretraining run's teacher (as its config names it), or the one given. A random
    teacher (pretrained: none) cannot be rebuilt: the scores are then a smoke test only."""
    from uniemox.exports.teacher import load_teacher

    cfg = dict(run_config.get("teacher") or {})
    if model:
        cfg["model"] = model
    if weights or pretrained:
        cfg["weights"], cfg["pretrained"] = weights, pretrained
    if not cfg.get("weights") and str(cfg.get("pretrained")).lower() == "none":
        logger.warning("the pretraining run used a RANDOM teacher (pretrained: none), which cannot be rebuilt: "
                       "zero-shot scores are meaningless (pass the run's --teacher-weights)")
    return load_teacher(cfg.get("model", "ViT-B-16"), pretrained=cfg.get("pretrained"), weights=cfg.get("weights"),
                        device=device, input_norm=cfg.get("input_norm", "imagenet"))


def load_student(path: str, proj_dim: int, device: torch.device):
    """The pretrained UniEmoX module (encoder, projection, fusion) of an export, in eval mode."""
    from uniemox.exports.release import load_pretrainer_checkpoint
    from uniemox.models import create_pretrainer

    weights, _, run_config = read_pretrain_export(path)
    m = run_config["model"]
    student = create_pretrainer(m["name"], fusion=m.get("fusion", "easy"), fusion_heads=m.get("fusion_heads", 3),
                                proj_dim=proj_dim, attn_backend=m.get("attn_backend", "auto"), **(m.get("arch") or {}))
    report = load_pretrainer_checkpoint(student, weights)
    if report.missing:
        raise UserError(f"{weights}: the export lacks {len(report.missing)} tensors of the student "
                        f"({', '.join(report.missing[:4])} ...): wrong teacher width or model config?")
    return student.to(device).eval(), run_config


def class_text_embeddings(teacher, class_names: Sequence[str], templates: Sequence[str] = (EMOTION_TEMPLATE,)
                          ) -> torch.Tensor:
    """[C, D] w_c of the module doc: the teacher's prompt ensemble of each class."""
    from uniemox.models.zero_shot import class_embeddings

    return class_embeddings(teacher.encode_text, teacher.tokenizer, class_names, templates, teacher.device)


class ZeroShotClassifier(nn.Module):
    def __init__(self, student, text_embeddings: torch.Tensor, logit_scale: float):
        super().__init__()
        self.student = student
        self.register_buffer("text", text_embeddings)
        self.logit_scale = float(logit_scale)

    def embed(self, scene: torch.Tensor, person: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised gamma [B, D]; person None: B is the scene itself."""
        s = self.student
        alpha = s.project_cls(s.model.forward_features(scene))
        if not s.fusion.uses_beta:
            return F.normalize(alpha.float(), dim=-1)
        beta = alpha if person is None else s.project_cls(s.model.forward_features(person))
        return F.normalize(s.fusion(alpha, beta).float(), dim=-1)

    def forward(self, scene: torch.Tensor, person: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.logit_scale * self.embed(scene, person) @ self.text.T


def build_zero_shot(export: str, class_names: Sequence[str], device: torch.device, teacher_model: Optional[str] = None,
                    teacher_weights: Optional[str] = None, teacher_pretrained: Optional[str] = None,
                    templates: Sequence[str] = (EMOTION_TEMPLATE,)) -> Tuple[ZeroShotClassifier, Dict]:
    _, _, run_config = read_pretrain_export(export)
    teacher = build_teacher(run_config, device, teacher_model, teacher_weights, teacher_pretrained)
    student, run_config = load_student(export, teacher.embed_dim, device)
    text = class_text_embeddings(teacher, class_names, templates)
    model = ZeroShotClassifier(student, text.to(device), teacher.logit_scale).eval()
    return model, run_config


def image_size_of(run_config: Dict) -> int:
    from uniemox.models import get_arch

    m = run_config["model"]
    return get_arch(m["name"], **(m.get("arch") or {})).img_size
