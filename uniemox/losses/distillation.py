"""L2 (similarity) and L1 (contrastive similarity) distillation losses of docs/method.md#losses.

g, o, t = L2-normalised student fused token, teacher image and teacher text embeddings.
  L2 = 1 - mean_i cos(g_i, o_i)
  L1 = 1 - mean_i cos(A_i, C_i),  A = g t^T, C = o t^T   (CLIP's logit scale cancels)
Inputs need not be normalised. ``teacher_text`` may have more rows than the batch
(global-batch variant: all-gathered text embeddings).
"""
from typing import Tuple

import torch

from uniemox.kernels import distillation_losses as _fused_or_reference


def distillation_losses(student: torch.Tensor, teacher_image: torch.Tensor, teacher_text: torch.Tensor,
                        impl: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (similarity_loss L2, contrastive_loss L1), fp32 scalars; gradients reach ``student`` only
    when the teacher tensors carry none."""
    return _fused_or_reference(student, teacher_image, teacher_text, impl=impl)
