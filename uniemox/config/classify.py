"""The fine-tuning / linear-probe run config (docs/method.md#fine-tuning). Saved as config.yaml in the run
directory. The recipes that fill it are YAML files in configs/: finetune_release.yaml (the
release's recipe) or linear_probe_mae.yaml (MAE's; probe_grid.yaml on top for a grid of probes), and
finetune_sample.yaml / linear_probe_sample.yaml / probe_grid_sample.yaml for the embedded sample set
on a CPU."""
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from .core import bounded, choice
from .sections import CheckpointConfig, LogConfig, OptimConfig, TrainConfig, adam_betas


@dataclass
class ClassifierModelConfig:
    name: str = "uniemox_vit_large_patch16"
    arch: Dict[str, int] = field(default_factory=dict)   # overrides, e.g. {depth: 2, img_size: 64}
    init: Optional[str] = None        # pretraining export dir, encoder .safetensors, MAE/release/timm checkpoint
    global_pool: str = choice("avg", "token")  # avg (mean of patch tokens + fc_norm) | token (CLS + norm)
    drop_path: float = bounded(0.1, lo=0.0, hi=1.0, hi_open=True)
    attn_backend: str = choice("auto", "xformers", "sdpa", "math")
    grad_checkpointing: bool = False  # recompute the blocks in the backward (memory for compute)


@dataclass
class LabeledDataConfig:
    path: Optional[str] = None        # shard-set folder (manifest.json) or a dataset make_shards reads
    dataset: Optional[str] = None     # split preset when `path` is a dataset (emo8, fi, emotion6, ...)
    train_split: str = "train"
    val_split: Optional[str] = "val"  # best-checkpoint selection; null: keep the last weights
    test_split: Optional[str] = "test"
    label_fraction: float = bounded(1.0, lo=0.0, hi=1.0, lo_open=True)  # seeded, class-stratified share of train
    fraction_seed: int = 0
    batch_size: int = bounded(64, lo=1)        # per rank, per micro step
    eval_batch_size: int = bounded(0, lo=0)    # 0: same as batch_size
    num_workers: int = bounded(4, lo=0)
    shuffle_buffer: int = bounded(1000, lo=0)
    seed: int = 0
    max_side: int = bounded(256, lo=16)        # when converting a dataset folder to shards


@dataclass
class AugConfig:
    train_scale: Tuple[float, float] = (0.08, 1.0)   # RandomResizedCrop area range
    rand_augment: str = ""            # timm RandAugment spec, e.g. rand-m9-mstd0.5-inc1; "" off
    reprob: float = bounded(0.0, lo=0.0, hi=1.0)     # random erasing probability (pixel mode)
    mixup: float = bounded(0.0, lo=0.0)              # mixup alpha (0 off)
    cutmix: float = bounded(0.0, lo=0.0)             # cutmix alpha (0 off)
    smoothing: float = bounded(0.0, lo=0.0, hi=1.0, hi_open=True)  # label smoothing


@dataclass
class ClassifierOptimConfig(OptimConfig):
    name: str = choice("adamw", "lars")  # lars: MAE's linear probe
    min_lr: float = bounded(1.0e-6, lo=0.0)
    layer_decay: float = bounded(0.75, lo=0.0, hi=1.0, lo_open=True)  # layer-wise lr decay (1.0 off)
    betas: Tuple[float, float] = adam_betas((0.9, 0.999))
    warmup_epochs: float = bounded(5.0, lo=0.0)
    epochs: float = bounded(100.0, lo=0.0, lo_open=True)


@dataclass
class ClassifierTrainConfig(TrainConfig):
    linear_probe: bool = False
    probe_grid: bool = False          # a grid of linear probes (section probe) on one pass of the features
    ema: bool = False                 # timm's ModelEmaV3 of the weights, validated beside them (best of two kept)
    ema_decay: float = bounded(0.9998, lo=0.0, hi=1.0, hi_open=True)
    ema_warmup: bool = True           # timm's decay warm-up (1 - (1 + step)^-2/3, capped at ema_decay)


@dataclass
class ProbeGridConfig:
    # one head per (blr, weight decay); a head's lr = blr x global batch / 256 (MAE's rule), on the
    # run's warm-up + cosine schedule; validation picks the head
    blrs: Tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    weight_decays: Tuple[float, ...] = (0.0,)


@dataclass
class ClassifierEvalConfig:
    every: int = bounded(0, lo=0)     # steps between validations; 0: once per epoch
    top_k: int = bounded(3, lo=1)     # predictions written per sample


@dataclass
class ClassifierLogConfig(LogConfig):
    run_dir: str = "runs/finetune"


@dataclass
class ClassifierCheckpointConfig(CheckpointConfig):
    every: int = bounded(0, lo=0)     # steps; 0: at every validation
    keep: int = bounded(2, lo=1)


@dataclass
class FinetuneConfig:
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    data: LabeledDataConfig = field(default_factory=LabeledDataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: ClassifierOptimConfig = field(default_factory=ClassifierOptimConfig)
    train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)
    eval: ClassifierEvalConfig = field(default_factory=ClassifierEvalConfig)
    probe: ProbeGridConfig = field(default_factory=ProbeGridConfig)
    log: ClassifierLogConfig = field(default_factory=ClassifierLogConfig)
    checkpoint: ClassifierCheckpointConfig = field(default_factory=ClassifierCheckpointConfig)
