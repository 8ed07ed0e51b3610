"""The run config of CLIP teacher training (launch/train_teacher.py): the shared sections with
CLIP's optimisation recipe as defaults, plus the open_clip model, zero-shot evaluation and the
weights export. Saved as config.yaml in the run directory."""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .core import bounded, choice
from .sections import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TrainConfig, adam_betas


@dataclass
class ClipModelConfig:
    name: str = "uniemox-clip-tiny-64"        # an open_clip model config (uniemox's or open_clip's)
    pretrained: Optional[str] = "none"        # start point: none (random init), an open_clip tag, uniemox-sample
    weights: Optional[str] = None             # or a CLIP weights file to adapt (OpenAI / open_clip layout)
    input_norm: str = choice("imagenet", "clip")  # how the pretraining teacher will be fed (teacher.input_norm)


@dataclass
class TeacherDataConfig(DataConfig):
    # Probability that a sample's caption is cut to its emotion sentence alone ("The overall
    # emotion conveyed is X."), the zero-shot prompt: without it the text tower can lean on the
    # scene/object words and leave the emotion word unlearned (sample set: 60% zero-shot at 0.0,
    # 98% at 0.3, measured on CPU).
    emotion_only_prob: float = bounded(0.0, lo=0.0, hi=1.0)


@dataclass
class ClipOptimConfig(OptimConfig):
    # CLIP's recipe: AdamW betas (0.9, 0.98), weight decay 0.2, warm-up then cosine.
    weight_decay: float = bounded(0.2, lo=0.0)
    betas: Tuple[float, float] = adam_betas((0.9, 0.98))
    warmup_epochs: float = bounded(2.0, lo=0.0)
    epochs: float = bounded(32.0, lo=0.0, lo_open=True)


@dataclass
class ClipLossConfig:
    # open_clip's ClipLoss across ranks: every image is contrasted with the captions of every rank
    # (CLIP's global negatives; false: each rank's own batch). One rank: nothing to gather
    global_negatives: bool = True
    # open_clip's --local-loss and --gather-with-grad, both on as in open_clip's large runs: each
    # rank holds [B_local, B_global] logits (linear memory) and the averaged gradient is that of
    # the global loss. local_loss needs gather_with_grad:
    # https://github.com/mlfoundations/open_clip/issues/616
    local_loss: bool = True
    gather_with_grad: bool = True


@dataclass
class ZeroShotEvalConfig:
    shards: Optional[str] = None              # labelled shards; none: the sample set's val split
    classes: Optional[List[str]] = None       # class names in label order; none: from the shards' manifest
    every: int = bounded(0, lo=-1)            # steps between evaluations (0: at the end only, -1: never)
    batch_size: int = bounded(64, lo=1)
    # prompts of each class: method (the caption template's emotion sentence), emotion (an ensemble of 8
    # phrasings), or a file of templates (one a line, {} for the class name)
    templates: str = "method"


@dataclass
class TeacherLogConfig(LogConfig):
    run_dir: str = "runs/teacher"


@dataclass
class ExportConfig:
    path: Optional[str] = None                # also write the final weights here (.safetensors + .json card)
    dtype: str = choice("fp16", "fp32")


@dataclass
class TeacherTrainConfig:
    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    data: TeacherDataConfig = field(default_factory=TeacherDataConfig)
    optim: ClipOptimConfig = field(default_factory=ClipOptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: TeacherLogConfig = field(default_factory=TeacherLogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    loss: ClipLossConfig = field(default_factory=ClipLossConfig)
    eval: ZeroShotEvalConfig = field(default_factory=ZeroShotEvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
