"""UniEmoX: MAE + CLIP-distillation pretraining of ViTs for scene emotion perception."""
__version__ = "0.1.0"
