"""The run config of CLIP teacher training (launch/train_teacher.py). Saved as config.yaml in the
run directory; every field can be set from YAML (``--config``) or as ``section.key=value``.
Data, optimisation, precision and checkpoint sections are the pretraining run's own."""
from dataclasses import dataclass, field
from typing import List, Optional

from uniemox.train.pretrain_config import CheckpointConfig, DataConfig, OptimConfig, TrainConfig


@dataclass
class ClipModelConfig:
    name: str = "uniemox-clip-tiny-64"        # an open_clip model config (uniemox's or open_clip's)
    pretrained: Optional[str] = "none"        # start point: none (random init), an open_clip tag, uniemox-sample
    weights: Optional[str] = None             # or a CLIP weights file to adapt (OpenAI / open_clip layout)
    input_norm: str = "imagenet"              # how the pretraining teacher will be fed (teacher.input_norm)


@dataclass
class TeacherDataConfig(DataConfig):
    # Probability that a sample's caption is cut to its emotion sentence alone ("The overall
    # emotion conveyed is X."), the zero-shot prompt: without it the text tower can lean on the
    # scene/object words and leave the emotion word unlearned (sample set: 60% zero-shot at 0.0,
    # 98% at 0.3, measured on CPU).
    emotion_only_prob: float = 0.0


@dataclass
class EvalConfig:
    shards: Optional[str] = None              # labelled shards for zero-shot accuracy; none: the sample set's val split
    classes: Optional[List[str]] = None       # class names in label order; none: from the shards' manifest
    every: int = 0                            # steps between evaluations (0: at the end only, -1: never)
    batch_size: int = 64


@dataclass
class TeacherLogConfig:
    run_dir: str = "runs/teacher"
    every: int = 10                           # console / TensorBoard scalars (step 1 is always reported)
    progress: bool = True


@dataclass
class ExportConfig:
    path: Optional[str] = None                # also write the final weights here (.safetensors + .json card)
    dtype: str = "fp16"                       # fp16 | fp32


@dataclass
class TeacherTrainConfig:
    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    data: TeacherDataConfig = field(default_factory=TeacherDataConfig)
    # CLIP's recipe: AdamW betas (0.9, 0.98), weight decay 0.2, warm-up then cosine.
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        blr=1.0e-3, weight_decay=0.2, betas=(0.9, 0.98), warmup_epochs=2.0, epochs=32.0))
    train: TrainConfig = field(default_factory=TrainConfig)
    log: TeacherLogConfig = field(default_factory=TeacherLogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


# With no data given (data.shards unset): train the tiny teacher on the embedded synthetic
# sample set's train split, as the packaged "uniemox-sample" teacher was trained. User YAML and
# overrides apply on top.
SAMPLE_PRESET = {
    "model": {"name": "uniemox-clip-tiny-64", "pretrained": "none"},
    "data": {"batch_size": 32, "num_workers": 2, "shuffle_buffer": 256, "emotion_only_prob": 0.3},
    "optim": {"lr": 1.0e-3, "max_steps": 400, "warmup_steps": 40, "grad_clip": 1.0},
    "log": {"run_dir": "runs/teacher-sample", "every": 20},
    "checkpoint": {"every": 200, "keep": 1},
    "eval": {"every": 100},
}
