"""Distillation losses of docs/method.md#losses (L2 similarity and L1 contrastive similarity).

g, o, t are the L2-normalised student (fused token), teacher image and teacher text
embeddings. L2 = 1 - mean_i cos(g_i, o_i). With A = g t^T and C = o t^T (CLIP's logit
scale cancels inside the cosine), L1 = 1 - mean_i cos(A_i, C_i) over rows: the diagonal
holds paired image-text similarities, the rest unpaired ones. No softmax, no temperature.

``teacher_text`` may hold more rows than the batch (a global-batch variant passes the
all-gathered text embeddings): A and C are then B x M.
"""
from typing import Tuple

import torch

from .constants import COSINE_EPS as EPS
from .dispatch import resolve_impl


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def distillation_losses_reference(student: torch.Tensor, teacher_image: torch.Tensor,
                                  teacher_text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    g, o, t = _unit(student.float()), _unit(teacher_image.float()), _unit(teacher_text.float())
    similarity = 1.0 - (g * o).sum(dim=-1).mean()
    a, c = g @ t.t(), o @ t.t()
    contrastive = 1.0 - (_unit(a) * _unit(c)).sum(dim=-1).mean()
    return similarity, contrastive


def distillation_losses(student, teacher_image, teacher_text, impl: str = "auto"):
    if resolve_impl(impl, student.device) == "triton":
        from .distillation_triton import distillation_losses_triton
        return distillation_losses_triton(student, teacher_image, teacher_text)
    return distillation_losses_reference(student, teacher_image, teacher_text)
