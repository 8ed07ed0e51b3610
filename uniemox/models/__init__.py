"""Models: ViT/MAE, attention backends, fusion, the frozen CLIP teacher, the pretrainer."""
from .attention import ATTENTION_BACKENDS, attention
from .mae import MaskedAutoencoder, num_kept
from .pretrainer import UniEmoXPretrainer, create_pretrainer
from .registry import Arch, create_encoder, get_arch, list_models, register_model
from .vit import VisionTransformer

__all__ = ["ATTENTION_BACKENDS", "attention", "MaskedAutoencoder", "num_kept", "UniEmoXPretrainer",
           "create_pretrainer", "Arch", "create_encoder", "get_arch", "list_models", "register_model",
           "VisionTransformer"]
