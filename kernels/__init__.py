"""Fused kernels for UniEmoX, imported as ``uniemox.kernels`` (never as top-level ``kernels``).

Each op has a plain PyTorch reference beside its Triton kernel. ``impl`` chooses:
``"torch"`` (reference), ``"triton"`` (the fused kernel; raises if it cannot run, never a
silent fallback) or ``"auto"`` (Triton on CUDA tensors, the reference elsewhere).
This package knows only torch and triton.
"""
from .dispatch import resolve_impl, triton_available
from .patches import patchify, unpatchify
from .masking import random_masking, random_masking_reference, unmask_tokens, unmask_tokens_reference
from .reconstruction import (masked_patch_mse, masked_reconstruction_loss,
                             masked_reconstruction_loss_reference)
from .distillation import distillation_losses, distillation_losses_reference

__all__ = [
    "resolve_impl", "triton_available", "patchify", "unpatchify",
    "random_masking", "random_masking_reference", "unmask_tokens", "unmask_tokens_reference",
    "masked_patch_mse", "masked_reconstruction_loss", "masked_reconstruction_loss_reference",
    "distillation_losses", "distillation_losses_reference",
]
