"""The sections every training task shares: data (shard streams), optimisation, training,
logging, checkpoints. Defaults are the paper's pretraining settings (METHOD §5); a task's config
changes a default where its recipe differs (e.g. CLIP's betas for teacher training). Every
numeric field declares its allowed range beside its default (``bounded``)."""
from dataclasses import dataclass
from typing import Optional, Tuple

from .core import bounded, choice

# torch.compile's modes ("default": torch.compile(mode=None)); train.compile_mode, benchmark.py step
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class DataConfig:
    shards: Optional[str] = None              # brace-expanded tar URLs ('::'-joined), or a shard-set folder
    batch_size: int = bounded(64, lo=1)       # per rank, per micro step
    num_workers: int = bounded(4, lo=0)
    shuffle_buffer: int = bounded(1000, lo=0)
    resampled: bool = False                   # sample shards with replacement (large multi-epoch runs)
    seed: int = 0


@dataclass
class OptimConfig:
    blr: float = bounded(1.0e-3, lo=0.0)      # lr = blr x global batch / 256
    lr: Optional[float] = bounded(None, lo=0.0)  # absolute lr; overrides blr
    min_lr: float = bounded(0.0, lo=0.0)
    weight_decay: float = bounded(0.05, lo=0.0)
    betas: Tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = bounded(0, lo=0)      # > 0: overrides warmup_epochs
    warmup_epochs: float = bounded(40.0, lo=0.0)  # used when warmup_steps is 0 and the epoch size is known
    max_steps: int = bounded(0, lo=0)         # > 0: overrides epochs
    epochs: float = bounded(200.0, lo=0.0, lo_open=True)  # counted on the data's manifest
    grad_clip: float = bounded(0.0, lo=0.0)   # 0 disables clipping
    grad_accum: int = bounded(1, lo=1)


@dataclass
class TrainConfig:
    precision: str = choice("auto", "bf16", "fp16", "fp32")  # auto: bf16 on CUDA, fp32 on CPU
    max_nonfinite: int = bounded(5, lo=1)     # consecutive skipped steps before the run stops
    seed: int = 0
    # one rank: ZeRO-1/2 run as ZeRO-0 (the same update, no partition copies; such a checkpoint
    # resumes as ZeRO-0). false keeps the JSON's stage
    single_rank_stage0: bool = True
    # torch.compile of the trained module (the pretraining student, the classifier) through
    # DeepSpeed's engine.compile; the first step compiles (docs/compile.md)
    compile: bool = False
    compile_mode: str = choice(*COMPILE_MODES)


@dataclass
class LogConfig:
    run_dir: str = "runs/pretrain"
    every: int = bounded(10, lo=1)            # console / TensorBoard / metrics.jsonl scalars
    progress: bool = True                     # a progress bar on rank 0


@dataclass
class CheckpointConfig:
    every: int = bounded(500, lo=0)           # steps; 0: at every evaluation. A final one is always written
    keep: int = bounded(3, lo=1)
    resume: Optional[str] = None              # auto | a checkpoint directory
