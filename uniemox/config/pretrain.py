"""The pretraining run config (docs/method.md#pretraining and #losses; defaults:
docs/method.md#data-and-settings): the shared sections plus the student (``model``) and the frozen
CLIP teacher (``teacher``). Saved as config.yaml in the run directory."""
from dataclasses import dataclass, field
from typing import Dict, Optional

from .core import bounded, choice
from .sections import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TrainConfig


@dataclass
class ModelConfig:
    name: str = "uniemox_vit_large_patch16"   # the paper's default size
    arch: Dict[str, int] = field(default_factory=dict)   # overrides, e.g. {depth: 2, img_size: 64}
    mask_ratio: float = bounded(0.75, lo=0.0, hi=1.0, hi_open=True)  # MAE's default; the release used 0.90
    norm_pix_loss: bool = False
    fusion: str = choice("easy", "weighted_sum", "dual_attention", "mlp_glu", "bilinear", "none")
    fusion_heads: int = bounded(3, lo=1)
    losses: str = "all"                       # any of reconstruction, similarity, contrastive (or l3,l2,l1)
    contrastive_scope: str = choice("local", "global")  # local (release: per GPU) | global (all-gathered text)
    attn_backend: str = choice("auto", "xformers", "sdpa", "math")
    kernels: str = choice("auto", "triton", "torch")
    grad_checkpointing: bool = False          # recompute encoder and decoder blocks in the backward (memory)
    init: Optional[str] = None                # facebookresearch/mae or release checkpoint


@dataclass
class TeacherConfig:
    model: str = "ViT-B-16"
    pretrained: Optional[str] = None          # an open_clip tag, or "none" for a random teacher
    weights: Optional[str] = None             # a CLIP weights file (open_clip or OpenAI layout)
    input_norm: str = choice("imagenet", "clip")  # imagenet (release) | clip (CLIP's own mean/std)
    precision: str = choice("auto", "bf16", "fp32")  # auto: bf16 on CUDA, fp32 on CPU


@dataclass
class PretrainLogConfig(LogConfig):
    run_dir: str = "runs/pretrain"
    image_every: int = bounded(200, lo=0)     # reconstruction grids (0 disables)


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: PretrainLogConfig = field(default_factory=PretrainLogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
