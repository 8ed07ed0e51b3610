"""The sections every training task shares: data (shard streams), optimisation, training,
logging, checkpoints. Defaults are the paper's pretraining settings
(docs/method.md#data-and-settings); a task's config changes a default where its recipe differs
(e.g. CLIP's betas for teacher training). Every numeric field declares its allowed range beside
its default (``bounded``)."""
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .core import bounded, choice, subset

def adam_betas(default: Tuple[float, float]):
    """AdamW's (beta1, beta2), each in [0, 1) (a task's config changes the default with this too)."""
    return bounded(default, lo=0.0, hi=1.0, hi_open=True)


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
    io_timeout: float = bounded(30.0, lo=0.0, lo_open=True)  # remote shards: seconds of silence before a read fails
    io_retries: int = bounded(3, lo=0)        # remote shards: tries again from where it failed, then skips


@dataclass
class OptimConfig:
    blr: float = bounded(1.0e-3, lo=0.0)      # lr = blr x global batch / 256
    lr: Optional[float] = bounded(None, lo=0.0)  # absolute lr; overrides blr
    min_lr: float = bounded(0.0, lo=0.0)
    weight_decay: float = bounded(0.05, lo=0.0)
    betas: Tuple[float, float] = adam_betas((0.9, 0.95))
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


TRACKERS = ("tensorboard", "jsonl", "csv", "wandb", "comet")


@dataclass
class LogConfig:
    run_dir: str = "runs/pretrain"
    every: int = bounded(10, lo=1)            # steps between reports of the scalars (console and trackers)
    progress: bool = True                     # a progress bar on rank 0
    # where the scalars go, each tracker in the run dir: tensorboard (tb/), jsonl (metrics.jsonl),
    # csv (csv/: DeepSpeed's CSV monitor), wandb (wandb/), comet (comet/); the last two need
    # pip install 'uniemox[trackers]'. The run config is each tracker's run config
    report_to: List[str] = subset(["tensorboard", "jsonl"], *TRACKERS)
    project: str = "uniemox"                  # the W&B / Comet project
    run_name: Optional[str] = None            # the W&B / Comet run name; none: the run dir's name
    online: bool = False                      # W&B / Comet upload as they go; false: local files to sync later
    sample_keys: bool = False                 # samples/rank{r}.jsonl: the sample keys (and epochs) of every step


@dataclass
class CheckpointConfig:
    every: int = bounded(500, lo=0)           # steps; 0: at every evaluation. A final one is always written
    keep: int = bounded(3, lo=1)
    resume: Optional[str] = None              # auto | a checkpoint directory
