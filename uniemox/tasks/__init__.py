"""What the one training loop trains: each task builds its data and model(s) and turns a batch
into a loss (the protocol: base.Task). Pretraining, CLIP teacher training, classification."""
from .base import MicroContext, Task

__all__ = ["MicroContext", "Task"]
