"""UniEmoX losses (docs/method.md#losses), one file each; total = L1 + L2 + L3 with unit weights."""
from .clip_contrastive import clip_contrastive_loss
from .components import LOSS_COMPONENTS, parse_components
from .distillation import distillation_losses
from .reconstruction import reconstruction_loss, reconstruction_loss_from_images

__all__ = ["clip_contrastive_loss", "LOSS_COMPONENTS", "parse_components", "distillation_losses",
           "reconstruction_loss", "reconstruction_loss_from_images"]
