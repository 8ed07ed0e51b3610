"""The two training steps the step benchmark times side by side, behind one interface.

* ``ours``: the trainer's step (the pretraining task's forward under the trainer's guarded
  micro-step): the DeepSpeed engine (ZeRO stage from configs/zero{N}.json; on one rank ZeRO-1/2
  run as ZeRO-0 unless --keep-stage, as the trainer does; bf16 module weights with fp32 master
  weights on CUDA), the chosen attention backend and kernels (``auto``: xformers and Triton on
  CUDA), both views through the encoder in one pass, the frozen ``CLIPTeacher`` (bf16 on CUDA,
  inference mode, LRU cache of prompt embeddings), the non-finite guard without reads to the
  host, torch's fused AdamW; with a compile mode, the student compiled as ``train.compile``
  does it (``compile_engine``; the teacher stays eager).
* ``reference``: the same model computed the plain way, as the authors' release (an MAE
  fork) does: fp32 weights, the forward under ``torch.autocast`` (bf16 where the run's
  precision is bf16), unfused PyTorch masking and losses (``kernel_impl="torch"``), one encoder
  pass per view, the same
  attention backend as ours unless --reference-attn (the release used math attention), the
  CLIP teacher in fp32 under the same autocast, outside inference mode and with every prompt
  tokenised and encoded on every step (``ReleaseTeacher``), ``loss.item()`` checked for
  finiteness (MAE's check), plain ``torch.optim.AdamW`` (torch's default implementation for
  the device), no DeepSpeed.

Both build the model from the same seed, get the same batches (uint8 views, normalised on the
device: the reference gets this saving too) and masking noise, use the same parameter groups,
learning rate and gradient clipping.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

from uniemox.data.transforms import model_input
from uniemox.models import create_pretrainer
from uniemox.exports.teacher import load_teacher
from uniemox.models.teacher import CLIPTeacher
from uniemox.train.param_groups import decay_groups

VARIANTS = ("ours", "reference")
Batch = Dict[str, object]  # scene, person [B, 3, S, S]; text: B prompts; noise [2, B, L]


class ReleaseTeacher(CLIPTeacher):
    """The teacher as the release runs it: fp32 weights, under the caller's autocast, no
    inference mode (only ``no_grad``: the towers are frozen), no prompt cache (build it with
    ``precision="fp32", text_cache_size=0``)."""

    def _frozen(self):
        return torch.no_grad()


@dataclass
class RunnerSpec:
    """What both variants share; ``attn``/``kernels``/``zero`` apply to ``ours`` only."""
    model: str
    batch: int
    mask_ratio: float
    precision: str               # resolved: bf16 | fp32
    attn: str
    kernels: str
    zero: int
    teacher: str
    lr: float = 1.5e-4
    weight_decay: float = 0.05
    grad_clip: float = 0.0
    seed: int = 0
    arch: Optional[Dict] = None  # architecture overrides (img_size, depth, ...)
    deepspeed_config: Optional[str] = None
    reference_attn: str = "math"     # the reference's attention backend
    single_rank_stage0: bool = True  # ours: one rank runs ZeRO-1/2 as ZeRO-0, as the trainer does
    compile_mode: Optional[str] = None  # ours: torch.compile's mode (train.compile_mode); None: eager


class StepRunner:
    """One training step per ``__call__(batch) -> loss``; ``close()`` frees the model."""

    def __init__(self, variant: str, step: Callable[[Batch], torch.Tensor], model: torch.nn.Module,
                 teacher: CLIPTeacher, owner: object = None):
        self.variant, self._step, self.model, self.teacher = variant, step, model, teacher
        self._owner = owner  # keeps the engine or optimizer alive as long as the runner

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self._step(batch)

    def close(self) -> None:
        self._step = self.model = self.teacher = self._owner = None


def _teacher(cls, spec: RunnerSpec, device: torch.device, **kwargs) -> CLIPTeacher:
    torch.manual_seed(spec.seed)  # random teacher weights: the same in both variants
    return load_teacher(spec.teacher, pretrained="none", cls=cls, device=device, **kwargs)


def _pretrainer(spec: RunnerSpec, teacher: CLIPTeacher, attn: str, kernels: str, device: torch.device,
                joint_views: bool):
    torch.manual_seed(spec.seed)  # both variants start from the same weights
    model = create_pretrainer(spec.model, proj_dim=teacher.embed_dim, mask_ratio=spec.mask_ratio,
                              attn_backend=attn, kernel_impl=kernels, joint_views=joint_views, **(spec.arch or {}))
    model.attach_teacher(teacher)
    return model.to(device)


def deepspeed_config_path(spec: RunnerSpec) -> str:
    """--deepspeed PATH, else the shipped configs/zero{N}.json of the case's stage."""
    from uniemox.config import deepspeed_config

    return deepspeed_config(spec.deepspeed_config or f"zero{spec.zero}.json")


def build_ours(spec: RunnerSpec, device: torch.device) -> StepRunner:
    from uniemox.tasks.pretrain import pretrain_forward
    from uniemox.train.compiling import compile_engine
    from uniemox.train.engine import build_ds_config, build_engine, build_optimizer
    from uniemox.train.step import guarded_micro_step

    teacher = _teacher(CLIPTeacher, spec, device, precision="auto")
    model = _pretrainer(spec, teacher, spec.attn, spec.kernels, device, joint_views=True)
    ds = build_ds_config(deepspeed_config_path(spec), micro_batch=spec.batch, grad_accum=1, world_size=1,
                         grad_clip=spec.grad_clip, precision=spec.precision,
                         single_rank_stage0=spec.single_rank_stage0)
    optimizer = build_optimizer(decay_groups(model, spec.weight_decay), spec.lr, (0.9, 0.95), ds, device)
    engine, _ = build_engine(model, optimizer, ds)
    if spec.compile_mode:
        compile_engine(engine, spec.compile_mode)
    dtype = torch.bfloat16 if spec.precision == "bf16" else torch.float32
    one, zero = torch.ones((), device=device), torch.zeros((), device=device)

    def step(batch: Batch) -> torch.Tensor:
        # the trainer's guarded micro-step of the pretraining task, without the report and checkpoints
        def forward():
            out, _ = pretrain_forward(engine, batch, batch["noise"], device, dtype)
            return out["loss"], {"loss": out["loss"]}
        return guarded_micro_step(engine, forward, one, zero).scalars["loss"]

    return StepRunner("ours", step, model, teacher, engine)


def build_reference(spec: RunnerSpec, device: torch.device) -> StepRunner:
    teacher = _teacher(ReleaseTeacher, spec, device, precision="fp32", text_cache_size=0)
    model = _pretrainer(spec, teacher, spec.reference_attn, "torch", device, joint_views=False)
    optimizer = torch.optim.AdamW(decay_groups(model, spec.weight_decay), lr=spec.lr, betas=(0.9, 0.95))
    autocast = spec.precision == "bf16"

    def step(batch: Batch) -> torch.Tensor:
        scene = model_input(batch["scene"], device, torch.float32)  # fp32 weights; autocast casts
        person = model_input(batch["person"], device, torch.float32)
        noise = batch["noise"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(scene, person, batch["text"], noise[0], noise[1])["loss"]
        if not math.isfinite(loss.item()):  # the MAE engine's check, one host sync per step
            raise RuntimeError("non-finite loss in the benchmark")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        return loss.detach()

    return StepRunner("reference", step, model, teacher, optimizer)


def build_runner(variant: str, spec: RunnerSpec, device: torch.device) -> StepRunner:
    return {"ours": build_ours, "reference": build_reference}[variant](spec, device)
