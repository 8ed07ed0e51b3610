"""Pretraining (docs/method.md#pretraining and #losses): the student (one ViT encoder for the scene
and person views, the MAE decoder, the fusion) learns masked reconstruction and distils from a
frozen CLIP teacher."""
import json
import logging
import os
from typing import Dict, List

import torch

from uniemox.config import recipe
from uniemox.data import build_pretrain_loader, ensure_sample_shards, epoch_size
from uniemox.data.tarstream import data_retry
from uniemox.data.transforms import model_input
from uniemox.errors import UserError
from uniemox.models import create_pretrainer, get_arch
from uniemox.models.flops import pretrainer_step_flops
from uniemox.train.checkpoint import read_marker

from .base import MicroContext, Task

LOSS_KEYS = ("loss", "reconstruction", "similarity", "contrastive")


def masking_noise(ctx: MicroContext, batch: int, patches: int, device: torch.device) -> torch.Tensor:
    """[2, N, L] noise (scene, person) drawn from the micro-batch's context alone, so a resumed
    run masks exactly as an uninterrupted one, whatever the global RNG went through. Drawn on the
    device itself (no host-to-device copy in the step)."""
    return torch.rand(2, batch, patches, generator=ctx.generator(device=device), device=device)


def pretrain_forward(engine, batch: Dict, noise: torch.Tensor, device: torch.device, dtype: torch.dtype):
    """The student's forward on a reader batch -> (its outputs, the scene view as fed). Shared
    with the step benchmark, which times exactly this. The frozen teacher runs first, eagerly,
    outside the engine's module: with ``train.compile`` that module is the compiled student."""
    scene = model_input(batch["scene"], device, dtype)
    person = model_input(batch["person"], device, dtype) if "person" in batch else None
    targets = engine.module.distillation_targets(scene, batch["text"])
    return engine(scene, person, None, noise[0], noise[1], targets=targets), scene


class PretrainTask(Task):
    name = "pretrain"
    resume_must_match = Task.resume_must_match + ("teacher.model", "teacher.input_norm")
    compilable = True

    @staticmethod
    def recipes(user: Dict) -> List[Dict]:
        """With no data named, the embedded sample run (configs/pretrain_sample.yaml)."""
        return [] if (user.get("data") or {}).get("shards") else [recipe("pretrain_sample")]

    def describe(self) -> str:
        return f"{self.cfg.model.name} <- teacher {self.cfg.teacher.model}"

    def build_data(self):
        cfg, run = self.cfg, self.run
        self.shards = cfg.data.shards or ensure_sample_shards(rank=run.rank)
        self.arch = get_arch(cfg.model.name, **cfg.model.arch)
        self.patches = (self.arch.img_size // self.arch.patch_size) ** 2
        return build_pretrain_loader(self.shards, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                                     image_size=self.arch.img_size, shuffle_buffer=cfg.data.shuffle_buffer,
                                     seed=cfg.data.seed, resampled=cfg.data.resampled, rank=run.rank,
                                     world_size=run.world, pin_memory=run.pinned, retry=data_retry(cfg.data))

    def epoch_samples(self):
        return epoch_size(self.shards)

    def build_model(self):
        from uniemox.exports.release import load_pretrainer_checkpoint
        from uniemox.exports.teacher import load_teacher

        cfg, run = self.cfg, self.run
        teacher = load_teacher(cfg.teacher.model, pretrained=cfg.teacher.pretrained, weights=cfg.teacher.weights,
                               device=run.device, precision=cfg.teacher.precision, input_norm=cfg.teacher.input_norm)
        model = create_pretrainer(cfg.model.name, fusion=cfg.model.fusion, fusion_heads=cfg.model.fusion_heads,
                                  proj_dim=teacher.embed_dim, mask_ratio=cfg.model.mask_ratio,
                                  losses=cfg.model.losses, contrastive_scope=cfg.model.contrastive_scope,
                                  norm_pix_loss=cfg.model.norm_pix_loss, attn_backend=cfg.model.attn_backend,
                                  kernel_impl=cfg.model.kernels, **cfg.model.arch)
        if cfg.model.init:
            self.log(logging.INFO, "init from %s: %s", cfg.model.init,
                     load_pretrainer_checkpoint(model, cfg.model.init).summary())
        model.model.set_grad_checkpointing(cfg.model.grad_checkpointing)
        model.attach_teacher(teacher)  # outside parameters()/state_dict(): ZeRO never sees it
        self.model, self.last = model, None
        return model

    def flops_per_sample(self):
        return pretrainer_step_flops(self.model, self.arch, self.cfg.teacher.model).per_sample

    def training_forward(self, engine, batch, ctx):
        noise = masking_noise(ctx, len(batch["key"]), self.patches, self.run.device)
        out, scene = pretrain_forward(engine, batch, noise, self.run.device, self.run.dtype)
        if "pred" in out:  # kept for the reconstruction grid
            self.last = (scene, out["pred"].detach(), out["mask"])
        return out["loss"], {f"loss/{k}": out[k] for k in LOSS_KEYS if k in out}

    def after_step(self, step: int) -> None:
        every = self.cfg.log.image_every
        if self.run.rank != 0 or not every or step % every or self.last is None:
            return
        from uniemox.train.visualize import reconstruction_grid, save_grid

        scene, pred, mask = self.last
        grid = reconstruction_grid(scene, pred, mask, self.arch.patch_size, self.cfg.model.norm_pix_loss)
        folder = os.path.join(self.run.run_dir, "reconstructions")
        os.makedirs(folder, exist_ok=True)
        save_grid(grid, os.path.join(folder, f"step_{step:08d}.png"))
        self.writer.image("reconstruction", grid, step)

    def checkpoint_meta(self, step) -> Dict:
        return {"model": self.cfg.model.name}

    def finish(self, engine, step, last_checkpoint, skipped_steps) -> None:
        if self.run.rank != 0:
            return
        run_dir = self.run.run_dir
        print(f"done: {step} steps, {skipped_steps} skipped.\n  TensorBoard:     tensorboard --logdir "
              f"{os.path.join(run_dir, 'tb')}\n  reconstructions: {os.path.join(run_dir, 'reconstructions')}\n"
              f"  checkpoint:      {last_checkpoint}\n  export:          uniemox-pretrain --export "
              f"{last_checkpoint} {os.path.join(run_dir, 'export')}")


def export_checkpoint(tag_path: str, out_dir: str) -> Dict[str, str]:
    """fp32 safetensors of a pretraining checkpoint (any ZeRO stage), labelled with the run config
    its marker records (the checkpoint's own, not whatever config.yaml says now)."""
    from uniemox.exports.pretrain import write_pretrain_export
    from uniemox.train.export import fp32_state_from_checkpoint
    from uniemox.train.hooks import export_progress

    if not os.path.isdir(tag_path):
        raise UserError(f"checkpoint directory not found: {tag_path}")
    marker = read_marker(tag_path)
    run_config = marker.get("config") or {}
    if "teacher" not in run_config:
        raise UserError(f"{tag_path} is not a pretraining checkpoint (its run config has no teacher section)")
    paths = write_pretrain_export(fp32_state_from_checkpoint(tag_path), out_dir, run_config, source=tag_path,
                                  step=marker.get("step"), progress=export_progress())
    print(json.dumps(paths, indent=1))
    return paths
