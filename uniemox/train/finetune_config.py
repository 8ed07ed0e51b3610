"""The fine-tuning / linear-probe run config (METHOD §5). Saved as config.yaml in the run
directory; every field can be set from YAML (``--config``) or as ``section.key=value``.

Two recipes fill the defaults: FINETUNE_RECIPE (the release's: RandAugment, random erasing,
mixup/cutmix, label smoothing, drop-path 0.2, AdamW, layer-wise lr decay 0.75 which the
release declares but never applies) and LINEAR_PROBE_RECIPE (MAE's: frozen encoder, CLS token,
BatchNorm without affine before the head, LARS, lr 0.1 x batch / 256, no weight decay).
SAMPLE_PRESET sizes a run for the embedded sample set on a CPU.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple


@dataclass
class FTModelConfig:
    name: str = "uniemox_vit_large_patch16"
    arch: Dict[str, int] = field(default_factory=dict)   # overrides, e.g. {depth: 2, img_size: 64}
    init: Optional[str] = None        # pretraining export dir, encoder .safetensors, MAE/release/timm checkpoint
    global_pool: str = "avg"          # avg (fine-tuning: mean of patch tokens + fc_norm) | token (CLS + norm)
    drop_path: float = 0.1
    attn_backend: str = "auto"


@dataclass
class FTDataConfig:
    path: Optional[str] = None        # shard-set folder (manifest.json) or a dataset make_shards reads
    dataset: Optional[str] = None     # split preset when `path` is a dataset (emo8, fi, emotion6, ...)
    train_split: str = "train"
    val_split: Optional[str] = "val"  # best-checkpoint selection; null: keep the last weights
    test_split: Optional[str] = "test"
    label_fraction: float = 1.0       # keep a seeded, class-stratified fraction of the train split
    fraction_seed: int = 0
    batch_size: int = 64              # per rank, per micro step
    eval_batch_size: int = 0          # 0: same as batch_size
    num_workers: int = 4
    shuffle_buffer: int = 1000
    seed: int = 0
    max_side: int = 256               # when converting a dataset folder to shards


@dataclass
class AugConfig:
    train_scale: Tuple[float, float] = (0.08, 1.0)   # RandomResizedCrop area range
    rand_augment: str = ""            # timm RandAugment spec, e.g. rand-m9-mstd0.5-inc1; "" off
    reprob: float = 0.0               # random erasing probability (pixel mode)
    mixup: float = 0.0                # mixup alpha (0 off)
    cutmix: float = 0.0               # cutmix alpha (0 off)
    smoothing: float = 0.0            # label smoothing


@dataclass
class FTOptimConfig:
    name: str = "adamw"               # adamw | lars (MAE linear probe)
    blr: float = 1.0e-3               # lr = blr x global batch / 256
    lr: Optional[float] = None        # absolute lr; overrides blr
    min_lr: float = 1.0e-6
    weight_decay: float = 0.05
    layer_decay: float = 0.75         # layer-wise lr decay (1.0 off); not used by the linear probe
    betas: Tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 5.0
    warmup_steps: int = 0             # overrides warmup_epochs when > 0
    epochs: float = 100.0
    max_steps: int = 0                # overrides epochs when > 0
    grad_clip: float = 0.0
    grad_accum: int = 1


@dataclass
class FTTrainConfig:
    linear_probe: bool = False
    precision: str = "auto"           # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    max_nonfinite: int = 5
    seed: int = 0


@dataclass
class FTEvalConfig:
    every: int = 0                    # steps between validations; 0: once per epoch
    top_k: int = 3                    # predictions written per sample


@dataclass
class FTLogConfig:
    run_dir: str = "runs/finetune"
    every: int = 10
    progress: bool = True


@dataclass
class FTCheckpointConfig:
    every: int = 0                    # steps; 0: at every validation
    keep: int = 2
    resume: Optional[str] = None      # auto | a checkpoint directory


@dataclass
class FinetuneConfig:
    model: FTModelConfig = field(default_factory=FTModelConfig)
    data: FTDataConfig = field(default_factory=FTDataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: FTOptimConfig = field(default_factory=FTOptimConfig)
    train: FTTrainConfig = field(default_factory=FTTrainConfig)
    eval: FTEvalConfig = field(default_factory=FTEvalConfig)
    log: FTLogConfig = field(default_factory=FTLogConfig)
    checkpoint: FTCheckpointConfig = field(default_factory=FTCheckpointConfig)


FINETUNE_RECIPE = {
    "model": {"global_pool": "avg", "drop_path": 0.2},
    "aug": {"rand_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0,
            "smoothing": 0.1},
    "optim": {"name": "adamw", "blr": 1.0e-3, "min_lr": 1.0e-6, "weight_decay": 0.05, "layer_decay": 0.75,
              "warmup_epochs": 5.0, "epochs": 100.0},
}

LINEAR_PROBE_RECIPE = {
    "model": {"global_pool": "token", "drop_path": 0.0},
    "train": {"linear_probe": True},
    "aug": {"rand_augment": "", "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0, "smoothing": 0.0},
    "optim": {"name": "lars", "blr": 0.1, "min_lr": 0.0, "weight_decay": 0.0, "layer_decay": 1.0,
              "warmup_epochs": 10.0, "epochs": 90.0},
}

# No data.path given: the embedded synthetic sample set, a tiny model, a CPU-sized run.
SAMPLE_PRESET = {
    "model": {"name": "uniemox_vit_tiny_patch16", "arch": {"img_size": 64, "depth": 6}},
    "data": {"batch_size": 32, "num_workers": 2, "shuffle_buffer": 256},
    "optim": {"epochs": 10.0, "warmup_epochs": 1.0},
    "log": {"run_dir": "runs/sample-finetune", "every": 8},
}

# ... and for --linear-probe on it: MAE's lr rule (blr 0.1) is made for batch 16384; at batch 32 and
# a few hundred steps it barely moves the LARS head (measured: README), so the sample run probes
# with a larger blr for 30 epochs.
SAMPLE_PROBE_PRESET = {
    "optim": {"blr": 5.0, "epochs": 30.0, "warmup_epochs": 3.0},
    "log": {"run_dir": "runs/sample-probe"},
}
