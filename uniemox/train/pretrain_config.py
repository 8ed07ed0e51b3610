"""The pretraining run config (METHOD §1-2, §5 defaults). Saved as config.yaml in the run
directory; every field can be set from YAML (``--config``) or as ``section.key=value``."""
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple


@dataclass
class ModelConfig:
    name: str = "uniemox_vit_large_patch16"   # the paper's default size
    arch: Dict[str, int] = field(default_factory=dict)   # overrides, e.g. {depth: 2, img_size: 64}
    mask_ratio: float = 0.75                  # MAE's default; the release used 0.90
    norm_pix_loss: bool = False
    fusion: str = "easy"                      # easy | weighted_sum | dual_attention | mlp_glu | bilinear | none
    fusion_heads: int = 3
    losses: str = "all"                       # any of reconstruction, similarity, contrastive
    contrastive_scope: str = "local"          # local (release: per GPU) | global (all-gathered text)
    attn_backend: str = "auto"                # auto | xformers | sdpa | math
    kernels: str = "auto"                     # auto | triton | torch
    init: Optional[str] = None                # facebookresearch/mae or release checkpoint


@dataclass
class TeacherConfig:
    model: str = "ViT-B-16"
    pretrained: Optional[str] = None          # an open_clip tag, or "none" for a random teacher
    weights: Optional[str] = None             # a CLIP weights file (open_clip or OpenAI layout)
    input_norm: str = "imagenet"              # imagenet (release) | clip (CLIP's own mean/std)
    precision: str = "auto"                   # auto: bf16 on CUDA, fp32 on CPU


@dataclass
class DataConfig:
    shards: Optional[str] = None              # brace-expanded tar URLs; none: the embedded sample set
    batch_size: int = 64                      # per rank, per micro step
    num_workers: int = 4
    shuffle_buffer: int = 1000
    resampled: bool = False                   # sample shards with replacement (large multi-epoch runs)
    seed: int = 0


@dataclass
class OptimConfig:
    blr: float = 1.0e-3                       # lr = blr x global batch / 256
    lr: Optional[float] = None                # absolute lr; overrides blr
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    warmup_epochs: float = 40.0               # used when warmup_steps is 0 and epochs are known
    max_steps: int = 0                        # 0: derived from epochs and the shard manifest
    epochs: float = 200.0
    grad_clip: float = 0.0                    # 0 disables clipping
    grad_accum: int = 1


@dataclass
class TrainConfig:
    precision: str = "auto"                   # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    max_nonfinite: int = 5                    # consecutive skipped steps before the run stops
    seed: int = 0
    inject_nan_steps: Tuple[int, ...] = ()    # testing aids: a NaN loss at these (0-based) steps,
    inject_nan_grad_steps: Tuple[int, ...] = ()  # or a NaN gradient with a finite loss


@dataclass
class LogConfig:
    run_dir: str = "runs/pretrain"
    every: int = 10                           # console / TensorBoard scalars
    image_every: int = 200                    # reconstruction grids (0 disables)
    progress: bool = True


@dataclass
class CheckpointConfig:
    every: int = 500                          # steps; a final one is always written
    keep: int = 3
    resume: Optional[str] = None              # auto | a checkpoint directory


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


# With no data given (data.shards unset), the run trains on the embedded synthetic sample set
# with a small model, sized to finish on a 2-core CPU in a few minutes. The user's YAML and
# overrides still apply on top of this.
SAMPLE_PRESET = {
    "model": {"name": "uniemox_vit_tiny_patch16", "arch": {"img_size": 64, "depth": 6},
              "mask_ratio": 0.75},
    "teacher": {"model": "uniemox-clip-tiny-64", "pretrained": "uniemox-sample"},  # packaged, trained on this set
    "data": {"batch_size": 32, "num_workers": 2, "shuffle_buffer": 256},
    "optim": {"blr": 1.5e-3, "max_steps": 300, "warmup_steps": 30, "grad_clip": 1.0},
    "log": {"run_dir": "runs/sample", "every": 10, "image_every": 100},
    "checkpoint": {"every": 100, "keep": 2},
}
