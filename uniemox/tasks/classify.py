"""Classification (METHOD §5): fine-tuning the encoder with a head, or a linear probe on the frozen
encoder, on a labelled shard set; validation picks the best weights (RUN_DIR/best, timm's layout),
which are then scored on the test split."""
import logging
import os
import random
from typing import Dict, List

import numpy as np
import torch

from uniemox.config import recipe
from uniemox.data import build_labeled_loader, ensure_sample_shards
from uniemox.data.transforms import model_input, to_device
from uniemox.errors import UserError

from .base import Task

HEADLINE = ("top1", "top3", "macro_f1", "mAP")
ERASE_SALT = 29  # random erasing draws from its own stream of the micro-batch's context


class ClassifyTask(Task):
    name = "fine-tune"
    loss_name = "loss/train"
    resume_must_match = Task.resume_must_match + ("train.linear_probe",)
    compilable = True

    @staticmethod
    def recipes(user: Dict) -> List[Dict]:
        """The release's fine-tuning recipe or MAE's linear probe; the sample set's sizes when no
        data is named; the model of ``model.init`` when it is an export folder and no model is named."""
        from uniemox.finetune.heads import init_architecture

        probe = bool((user.get("train") or {}).get("linear_probe"))
        layers = [recipe("linear_probe_mae" if probe else "finetune_release")]
        if not (user.get("data") or {}).get("path"):
            layers += [recipe("finetune_sample")] + ([recipe("linear_probe_sample")] if probe else [])
        model = user.get("model") or {}
        if model.get("init") and "name" not in model:
            layers.append({"model": init_architecture(str(model["init"]))})
        return layers

    def __init__(self, cfg, run):
        super().__init__(cfg, run)
        self.probe = cfg.train.linear_probe
        self.name = "linear probe" if self.probe else "fine-tune"
        self.best = {"metric": float("-inf"), "step": None}
        self.eval_dir, self.best_dir = os.path.join(run.run_dir, "eval"), os.path.join(run.run_dir, "best")

    def describe(self) -> str:
        frac = self.data.fraction
        frac = f", label fraction {frac['kept']}/{frac['of']}" if frac else ""
        return (f"{self.name} {self.cfg.model.name}, {len(self.classes)} classes"
                f"{' (multi-label)' if self.multi else ''}, {self.data.train_count} train samples{frac}")

    # -- built once ---------------------------------------------------------------------------------
    def build_data(self):
        from uniemox.finetune.augment import FinetuneAugment
        from uniemox.finetune.data import prepare_data
        from uniemox.models import get_arch

        cfg, run = self.cfg, self.run
        self.data = data = prepare_data(
            cfg.data.path, cfg.data.dataset, run.run_dir, cfg.data.train_split, cfg.data.val_split,
            cfg.data.test_split, cfg.data.label_fraction, cfg.data.fraction_seed, cfg.data.max_side,
            run.world * max(1, cfg.data.num_workers), run.rank,
            sample_root=None if cfg.data.path else ensure_sample_shards(rank=run.rank))
        self.classes, self.multi = data.classes, data.multi_label
        self.image_size = get_arch(cfg.model.name, **cfg.model.arch).img_size
        augment = FinetuneAugment(self.image_size, cfg.aug.train_scale, cfg.aug.rand_augment)
        return build_labeled_loader(data.train, cfg.data.batch_size, cfg.data.num_workers, self.image_size,
                                    train=True, shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.data.seed,
                                    rank=run.rank, world_size=run.world, num_classes=self._targets(),
                                    view_transform=augment, pin_memory=run.pinned, class_count=len(self.classes))

    def _targets(self):
        return len(self.classes) if self.multi else None

    def epoch_samples(self):
        return self.data.train_count

    def build_model(self):
        from uniemox.finetune.heads import LinearProbe, load_init
        from uniemox.models import create_encoder

        cfg, run = self.cfg, self.run
        encoder = create_encoder(cfg.model.name, num_classes=0 if self.probe else len(self.classes),
                                 global_pool=cfg.model.global_pool, drop_path_rate=cfg.model.drop_path,
                                 attn_backend=cfg.model.attn_backend, **cfg.model.arch)
        if cfg.model.init:
            self.log(logging.INFO, "init from %s: %s", cfg.model.init, load_init(encoder, cfg.model.init).summary())
        else:
            self.log(logging.WARNING, "no model.init: the encoder starts from RANDOM weights")
        if not self.probe:
            return encoder
        probe = LinearProbe(encoder.to(run.device), len(self.classes))
        probe.autocast_dtype = None if run.dtype == torch.float32 else run.dtype
        return probe

    def param_groups(self, model):
        from uniemox.finetune.recipe import param_groups

        return param_groups(model, self.probe, self.cfg.optim.weight_decay, self.cfg.optim.layer_decay)

    def build_optimizer(self, groups, lr, ds):
        from uniemox.finetune.recipe import build_torch_optimizer

        return build_torch_optimizer(self.cfg.optim.name, groups, lr, self.cfg.optim.betas, ds, self.run.device)

    def before_training(self, engine):
        from uniemox.finetune.augment import BatchErasing, build_mixup
        from uniemox.finetune.recipe import build_criterion

        cfg, rank = self.cfg, self.run.rank
        self.erase = BatchErasing(cfg.aug.reprob, self.run.device) if cfg.aug.reprob > 0 else None
        self.mixup = build_mixup(cfg.aug.mixup, cfg.aug.cutmix, cfg.aug.smoothing, len(self.classes), self.multi)
        if self.mixup is not None and cfg.data.batch_size % 2:
            raise UserError(f"mixup/cutmix pair samples within a batch: data.batch_size must be even, "
                            f"got {cfg.data.batch_size}")
        self.criterion = build_criterion(self.multi, self.mixup is not None, cfg.aug.smoothing)
        # the training stream's randomness (mixup: numpy; drop-path: torch) differs per rank, is
        # seeded, and is restored on resume with the checkpoint's RNG states
        random.seed(cfg.train.seed + rank)
        np.random.seed(cfg.train.seed + rank)
        torch.manual_seed(cfg.train.seed + rank)

    # -- every step ---------------------------------------------------------------------------------
    def training_forward(self, engine, batch, ctx):
        device = self.run.device
        images = model_input(batch["image"], device, torch.float32)  # uint8 -> normalised, on the device
        target = to_device(batch["targets"] if self.multi else batch["label"], device)
        if self.erase is not None:
            images = self.erase(images, ctx.seed_for(ERASE_SALT))
        if self.mixup is not None:
            images, target = self.mixup(images, target)
        loss = self.criterion(engine(images.to(self.run.dtype)).float(), target)
        return loss, {"loss/train": loss}

    def progress_fields(self, values):
        return {"best": f"{self.best['metric']:.4f}" if self.best["step"] else "-"}

    # -- validation, the best weights, test ----------------------------------------------------------
    def eval_every(self, plan):
        per_epoch = max(1, self.data.train_count // plan.global_batch)
        return (self.cfg.eval.every or per_epoch) if self.data.val else None

    def _score(self, forward, urls, name: str, tag: str, step: int, rows: bool = False):
        """Predictions of every rank gathered; rank 0 writes the report -> its metrics (None elsewhere)."""
        from uniemox.eval.evaluate import gather, predict_loader, sum_counts
        from uniemox.eval.report import write_report

        cfg, run = self.cfg, self.run
        loader = build_labeled_loader(urls, cfg.data.eval_batch_size or cfg.data.batch_size, cfg.data.num_workers,
                                      self.image_size, train=False, rank=run.rank, world_size=run.world,
                                      num_classes=self._targets(), pin_memory=run.pinned,
                                      class_count=len(self.classes))
        pred = gather(predict_loader(forward, loader, run.device, self.multi))
        skipped = sum_counts(loader.skip_counts)  # collective, as gather: every rank calls it
        if run.rank != 0:
            return None
        metrics = dict(pred.metrics(self.classes, self.multi), skipped=skipped)
        write_report(metrics, self.eval_dir, name, self.writer, step, tag=tag, echo=not cfg.log.progress,
                     predictions=pred.rows(self.classes, cfg.eval.top_k, self.multi) if rows else None)
        return metrics

    def evaluate(self, engine, step):
        from uniemox.eval.metrics import primary

        module, dtype = engine.module, self.run.dtype
        module.eval()
        metrics = self._score(lambda x: module(x.to(dtype)), self.data.val, f"val_step_{step:08d}", "val", step)
        module.train()
        value = torch.tensor([primary(metrics) if self.run.rank == 0 else 0.0])
        if self.run.world > 1:
            torch.distributed.broadcast(value, 0)
        if float(value) > self.best["metric"]:
            self.best = {"metric": float(value), "step": step}
            self.save_best(engine, step, metrics)
        self.log(logging.INFO, "step %d: val %s %.4f (best %.4f at step %d)", step, "mAP" if self.multi else "top-1",
                 float(value), self.best["metric"], self.best["step"])
        return {}  # the report went to TensorBoard and metrics.jsonl already

    def save_best(self, engine, step: int, metrics) -> None:
        """The classifier's fp32 weights in timm's layout (collective: ZeRO-3 gathers them)."""
        from uniemox.models.timm_models import write_export
        from uniemox.train.engine import fp32_module_state

        cfg, run = self.cfg, self.run
        state = fp32_module_state(engine)
        if self.probe:
            state = engine.module.folded_state(state)
        if run.rank == 0:
            extra = {"step": step, "task": "multi_label" if self.multi else "single_label",
                     "recipe": "linear_probe" if self.probe else "finetune", "init": cfg.model.init,
                     "val": {k: metrics[k] for k in HEADLINE if k in metrics} if metrics else None}
            write_export(state, self.best_dir, cfg.model.name, dict(cfg.model.arch), len(self.classes),
                         "token" if self.probe else cfg.model.global_pool, self.classes, extra)
        if run.world > 1:
            torch.distributed.barrier()

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state["best"]

    def checkpoint_meta(self, step):
        return {"model": self.cfg.model.name}

    def finish(self, engine, step, last_checkpoint, skipped_steps):
        from uniemox.models.timm_models import create_from_export

        run = self.run
        if not self.data.val or self.best["step"] is None:
            self.log(logging.WARNING, "no validation split: best/ holds the final weights")
            self.save_best(engine, step, None)
        test = None
        if self.data.test:  # scored with the best weights, loaded back through timm
            best_model, _ = create_from_export(self.best_dir)
            test = self._score(best_model.to(run.device), self.data.test, "test", "test", step, rows=True)
        if run.rank != 0:
            return
        headline = "mAP" if self.multi else "top1"
        print(f"done: {step} steps, {skipped_steps} skipped; best val {headline} {self.best['metric']:.4f} at step "
              f"{self.best['step']}" if self.best["step"] else f"done: {step} steps")
        if test is not None:
            print(f"  test {headline}: {test[headline]:.4f}  ({os.path.join(self.eval_dir, 'test.json')})")
        print(f"  best model:  {self.best_dir}  (timm.create_model('local-dir:{self.best_dir}', pretrained=True))\n"
              f"  checkpoint:  {last_checkpoint}\n  TensorBoard: tensorboard --logdir "
              f"{os.path.join(run.run_dir, 'tb')}\n  predict:     uniemox-predict --model {self.best_dir} IMAGE...")


def export_classifier(source: str, out_dir: str) -> Dict[str, str]:
    """A timm export (model.safetensors + config.json) of a fine-tuning run dir (its best/) or of
    a pretraining export folder (the headless encoder)."""
    import json
    import shutil

    from uniemox.models.timm_models import export_pretrained, read_export_config

    best = os.path.join(source, "best")
    if os.path.isfile(os.path.join(best, "config.json")):  # a fine-tuning run dir
        read_export_config(best)
        shutil.copytree(best, out_dir, dirs_exist_ok=True)
        paths = {"weights": os.path.join(out_dir, "model.safetensors"), "config": os.path.join(out_dir, "config.json")}
    else:
        paths = export_pretrained(source, out_dir)
    print(json.dumps(paths, indent=1))
    return paths
