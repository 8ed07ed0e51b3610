"""Classification (docs/method.md#fine-tuning): fine-tuning the encoder with a head, or a linear
probe on the frozen encoder, on a labelled shard set; validation picks the best weights
(RUN_DIR/best, timm's layout), which are then scored on the test split."""
import logging
import os
import random
from typing import Dict, List, Optional

import numpy as np
import torch

from uniemox.config import recipe
from uniemox.data import build_labeled_loader, ensure_sample_shards
from uniemox.data.transforms import model_input, to_device
from uniemox.errors import UserError

from .base import Task

ERASE_SALT = 29  # random erasing draws from its own stream of the micro-batch's context


class ClassifyTask(Task):
    name = "fine-tune"
    loss_name = "loss/train"
    resume_must_match = Task.resume_must_match + ("train.linear_probe", "train.ema")
    compilable = True

    @staticmethod
    def recipes(user: Dict) -> List[Dict]:
        """The release's fine-tuning recipe or MAE's linear probe (and the probe grid's on top); the
        sample set's sizes when no data is named; the model of ``model.init`` when it is an export
        folder and no model is named."""
        from uniemox.exports.kinds import init_architecture

        train = user.get("train") or {}
        grid = bool(train.get("probe_grid"))
        probe = grid or bool(train.get("linear_probe"))
        sample = not (user.get("data") or {}).get("path")
        layers = [recipe("linear_probe_mae" if probe else "finetune_release")]
        if sample:
            layers += [recipe("finetune_sample")] + ([recipe("linear_probe_sample")] if probe else [])
        if grid:
            layers += [recipe("probe_grid")] + ([recipe("probe_grid_sample")] if sample else [])
        model = user.get("model") or {}
        if model.get("init") and "name" not in model:
            layers.append({"model": init_architecture(str(model["init"]))})
        return layers

    def __init__(self, cfg, run):
        super().__init__(cfg, run)
        self.probe = cfg.train.linear_probe
        self.name = "linear probe" if self.probe else "fine-tune"
        self.best = {"metric": float("-inf"), "step": None, "weights": "raw"}
        self.ema = None
        self.best_dir = os.path.join(run.run_dir, "best")

    def describe(self) -> str:
        frac = self.data.fraction
        frac = f", label fraction {frac['kept']}/{frac['of']}" if frac else ""
        return (f"{self.name} {self.cfg.model.name}, {len(self.classes)} classes"
                f"{' (multi-label)' if self.multi else ''}, {self.data.train_count} train samples{frac}")

    # -- built once ---------------------------------------------------------------------------------
    def build_data(self):
        from uniemox.finetune.augment import FinetuneAugment
        from uniemox.finetune.data import prepare_data
        from uniemox.finetune.scoring import SplitScorer
        from uniemox.models import get_arch

        cfg, run = self.cfg, self.run
        self.data = data = prepare_data(
            cfg.data.path, cfg.data.dataset, run.run_dir, cfg.data.train_split, cfg.data.val_split,
            cfg.data.test_split, cfg.data.label_fraction, cfg.data.fraction_seed, cfg.data.max_side,
            run.world * max(1, cfg.data.num_workers), run.rank,
            sample_root=None if cfg.data.path else ensure_sample_shards(rank=run.rank))
        self.classes, self.multi = data.classes, data.multi_label
        self.image_size = get_arch(cfg.model.name, **cfg.model.arch).img_size
        self.scorer = SplitScorer(cfg, run, self.classes, self.multi, self.image_size)
        augment = FinetuneAugment(self.image_size, cfg.aug.train_scale, cfg.aug.rand_augment)
        return build_labeled_loader(data.train, cfg.data.batch_size, cfg.data.num_workers, self.image_size,
                                    train=True, shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.data.seed,
                                    rank=run.rank, world_size=run.world, num_classes=len(self.classes) if self.multi else None,
                                    view_transform=augment, pin_memory=run.pinned, class_count=len(self.classes))

    def epoch_samples(self):
        return self.data.train_count

    def build_encoder(self):
        """The encoder, from ``model.init`` (headless for a probe)."""
        from uniemox.finetune.heads import load_init
        from uniemox.models import create_encoder

        cfg = self.cfg
        encoder = create_encoder(cfg.model.name, num_classes=0 if self.probe else len(self.classes),
                                 global_pool=cfg.model.global_pool, drop_path_rate=cfg.model.drop_path,
                                 attn_backend=cfg.model.attn_backend, **cfg.model.arch)
        encoder.set_grad_checkpointing(cfg.model.grad_checkpointing)
        if cfg.model.init:
            self.log(logging.INFO, "init from %s: %s", cfg.model.init, load_init(encoder, cfg.model.init).summary())
        else:
            self.log(logging.WARNING, "no model.init: the encoder starts from RANDOM weights")
        return encoder

    def build_model(self):
        from uniemox.finetune.heads import LinearProbe

        encoder = self.build_encoder()
        if not self.probe:
            return encoder
        probe = LinearProbe(encoder.to(self.run.device), len(self.classes))
        probe.autocast_dtype = None if self.run.dtype == torch.float32 else self.run.dtype
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
        if cfg.train.ema:
            from uniemox.finetune.ema import FinetuneEma

            self.ema = FinetuneEma(engine, cfg.train.ema_decay, cfg.train.ema_warmup, engine.zero_optimization_stage())
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

    def after_step(self, step):
        if self.ema is not None:
            self.ema.update(step)

    def progress_fields(self, values):
        return {"best": f"{self.best['metric']:.4f}" if self.best["step"] else "-"}

    # -- validation, the best weights, test ----------------------------------------------------------
    def eval_every(self, plan):
        per_epoch = max(1, self.data.train_count // plan.global_batch)
        return (self.cfg.eval.every or per_epoch) if self.data.val else None

    def _validate(self, module, dtype, step: int, weights: str):
        """(primary score on every rank, metrics on rank 0) of one set of weights on val."""
        from uniemox.eval.metrics import primary

        tag = "val" if weights == "raw" else f"val_{weights}"
        training = module.training
        module.eval()
        metrics = self.scorer.score(lambda x: module(x.to(dtype)), self.data.val, f"{tag}_step_{step:08d}", tag, step,
                                    self.writer)
        module.train(training)
        return self.scorer.shared(primary(metrics) if metrics else 0.0), metrics

    def evaluate(self, engine, step):
        """The trained weights, and their EMA beside them (kept in fp32); the better one of the two,
        if better than any before, becomes best/ (ties keep the trained weights)."""
        scored = [("raw",) + self._validate(engine.module, self.run.dtype, step, "raw")]
        if self.ema is not None:
            scored.append(("ema",) + self._validate(self.ema.module, torch.float32, step, "ema"))
        weights, value, metrics = max(scored, key=lambda s: s[1])
        if value > self.best["metric"]:
            self.best = {"metric": value, "step": step, "weights": weights}
            self.save_best(engine, step, metrics, weights)
        self.log(logging.INFO, "step %d: val %s %s (best %.4f at step %d, %s weights)", step,
                 "mAP" if self.multi else "top-1", ", ".join(f"{w} {v:.4f}" for w, v, _ in scored),
                 self.best["metric"], self.best["step"], self.best["weights"])
        return {}  # the report went to TensorBoard and metrics.jsonl already

    def save_best(self, engine, step: int, metrics, weights: str = "raw") -> None:
        """The trained weights (their fp32 masters; collective: ZeRO-3 gathers them) or their EMA,
        for a probe with the BatchNorm folded into the Linear, as best/."""
        from uniemox.train.engine import fp32_module_state

        state = fp32_module_state(engine) if weights == "raw" else \
            {k: v.float().cpu() for k, v in self.ema.module.state_dict().items()}
        if self.probe:
            state = engine.module.folded_state(state)
        extra = {"ema_decay": self.cfg.train.ema_decay} if weights == "ema" else {}
        self.export_best(state, step, metrics, weights=weights, **extra)

    def export_best(self, state, step: int, metrics, recipe: Optional[str] = None, **meta) -> None:
        """best/ in timm's hub layout, written by rank 0 (every rank calls it)."""
        from uniemox.finetune.export import write_classifier

        if self.run.rank == 0:
            write_classifier(state, self.best_dir, self.cfg, self.classes, self.multi, self.probe, step, metrics,
                             recipe=recipe or ("linear_probe" if self.probe else "finetune"), **meta)
        if self.run.world > 1:
            torch.distributed.barrier()

    def state_dict(self):
        state = {"best": self.best}
        if self.ema is not None and self.run.rank == 0:
            state["ema"] = self.ema.state_dict()  # one copy: the other ranks get it on resume
        return state

    def load_state_dict(self, state):
        self.best = dict({"weights": "raw"}, **state["best"])
        if self.ema is not None:
            self.ema.load_state_dict(state.get("ema"), self.run.world)

    def checkpoint_meta(self, step):
        return {"model": self.cfg.model.name}

    def finish(self, engine, step, last_checkpoint, skipped_steps):
        from uniemox.finetune.export import add_test_to_card
        from uniemox.exports.hub import create_from_export

        run = self.run
        if not self.data.val or self.best["step"] is None:
            self.log(logging.WARNING, "no validation split: best/ holds the final weights")
            self.save_best(engine, step, None)
        test = None
        if self.data.test:  # scored with the best weights, loaded back through timm
            best_model, _ = create_from_export(self.best_dir)
            test = self.scorer.score(best_model.to(run.device), self.data.test, "test", "test", step, self.writer,
                                     rows=True)
        if run.rank != 0:
            return
        if test is not None:
            add_test_to_card(self.best_dir, self.cfg, self.classes, test)
        headline = "mAP" if self.multi else "top1"
        print(f"done: {step} steps, {skipped_steps} skipped; best val {headline} {self.best['metric']:.4f} at step "
              f"{self.best['step']} ({self.best['weights']} weights)" if self.best["step"] else f"done: {step} steps")
        if test is not None:
            print(f"  test {headline}: {test[headline]:.4f}  ({os.path.join(self.scorer.eval_dir, 'test.json')})")
        print(f"  best model:  {self.best_dir}  (timm.create_model('local-dir:{self.best_dir}', pretrained=True); "
              f"model card {os.path.join(self.best_dir, 'README.md')})\n"
              f"  checkpoint:  {last_checkpoint}\n  TensorBoard: tensorboard --logdir "
              f"{os.path.join(run.run_dir, 'tb')}\n  predict:     uniemox-predict --model {self.best_dir} IMAGE...")
