"""A linear probe that does not depend on luck: a grid of probe heads (blr x weight decay, the
``probe`` section) trained in one run on one pass of the frozen encoder per batch (DINOv2's
linear evaluation), MAE's probe head and optimizer for each. Validation scores every head; the
head with the best validation score is the run's choice: best/ (timm's layout, the BatchNorm
folded), scored on test; every head's best weights are scored on test too, for the grid's report
(eval/probe_grid.json, .csv, .png). Selection never looks at test."""
import logging

import torch

from uniemox.data.transforms import model_input, to_device
from uniemox.errors import UserError

from .classify import ClassifyTask


class ProbeGridTask(ClassifyTask):
    name = "probe grid"
    resume_must_match = ClassifyTask.resume_must_match + ("train.probe_grid", "probe")

    def __init__(self, cfg, run):
        from uniemox.finetune.probe_grid import GridBest, grid_heads

        super().__init__(cfg, run)
        self.probe, self.name = True, "probe grid"
        if cfg.train.ema:
            raise UserError("train.ema: the probe grid keeps each head's best validation weights; set train.ema=false")
        if cfg.optim.grad_clip > 0:
            raise UserError("optim.grad_clip: clipping by the norm of all heads' gradients would tie the heads "
                            "together; the probe grid needs optim.grad_clip=0")
        if cfg.aug.mixup > 0 or cfg.aug.cutmix > 0 or cfg.aug.reprob > 0:
            raise UserError("the probe grid trains on the probe's views (crop and flip): set aug.mixup, aug.cutmix "
                            "and aug.reprob to 0")
        self.heads = grid_heads(cfg.probe.blrs, cfg.probe.weight_decays,
                                cfg.data.batch_size * cfg.optim.grad_accum * run.world)
        self.grid = GridBest(len(self.heads))
        self.best["head"] = None

    def describe(self) -> str:
        return (f"{super().describe()}; {len(self.heads)} probe heads: blr {list(self.cfg.probe.blrs)} x "
                f"weight decay {list(self.cfg.probe.weight_decays)}")

    def build_data(self):
        loader = super().build_data()
        if not self.data.val:
            raise UserError("the probe grid chooses its head on validation: data.val_split must name a split")
        return loader

    def build_model(self):
        from uniemox.finetune.heads import ProbeGrid

        grid = ProbeGrid(self.build_encoder().to(self.run.device), len(self.classes), len(self.heads))
        grid.autocast_dtype = None if self.run.dtype == torch.float32 else self.run.dtype
        return grid

    def param_groups(self, model):
        from uniemox.finetune.probe_grid import grid_groups

        return grid_groups(model.heads, self.heads)

    def build_optimizer(self, groups, lr, ds):
        from uniemox.finetune.probe_grid import scale_to

        return super().build_optimizer(scale_to(groups, lr), lr, ds)

    def training_forward(self, engine, batch, ctx):
        device = self.run.device
        images = model_input(batch["image"], device, torch.float32)
        target = to_device(batch["targets"] if self.multi else batch["label"], device)
        logits = engine(images.to(self.run.dtype)).float()  # [B, heads, C]: one pass of the encoder
        losses = torch.stack([self.criterion(logits[:, h], target) for h in range(len(self.heads))])
        return losses.sum(), {"loss/train": losses.mean(),
                              **{f"probe_loss/{h.label}": losses[h.index] for h in self.heads}}

    # -- validation: every head, the best one kept -----------------------------------------------------
    def evaluate(self, engine, step):
        from uniemox.eval.metrics import primary
        from uniemox.train.engine import fp32_module_state

        module, rank = engine.module, self.run.rank
        module.eval()
        pred, skipped = self.scorer.predict(lambda x: module(x.to(self.run.dtype)), self.data.val)
        module.train()
        state = fp32_module_state(engine)  # collective under ZeRO-3
        values = [primary(pred.head(h.index).metrics(self.classes, self.multi)) if rank == 0 else 0.0
                  for h in self.heads]
        values = [self.scorer.shared(v) for v in values]
        self.grid.update(values, step, state)
        top = max(range(len(values)), key=lambda i: (values[i], -i))
        metrics = None
        if rank == 0:
            metrics = self.scorer.report(pred.head(top), skipped, f"val_step_{step:08d}", "val", step, self.writer)
            self.writer.scalars({f"probe_grid/val_{h.label}": values[h.index] for h in self.heads}, step)
        if values[top] > self.best["metric"]:
            head = self.heads[top]
            self.best = {"metric": values[top], "step": step, "weights": "raw", "head": top}
            self.export_best(module.folded_state(state, top), step, metrics, recipe="probe_grid",
                             probe_head={"index": top, "blr": head.blr, "weight_decay": head.weight_decay,
                                         "lr": head.lr})
        self.log(logging.INFO, "step %d: val %s of %d heads: best %.4f (%s); best so far %.4f (%s, step %d)", step,
                 self.metric, len(values), values[top], self.heads[top].label, self.best["metric"],
                 self.heads[self.best["head"]].label, self.best["step"])
        return {}

    @property
    def metric(self) -> str:
        return "mAP" if self.multi else "top1"

    def state_dict(self):
        return dict(super().state_dict(), grid=self.grid.state_dict())

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.grid.load_state_dict(state["grid"])

    # -- the end: the chosen head on test (best/, through timm), the whole grid's table -------------------
    def finish(self, engine, step, last_checkpoint, skipped_steps):
        super().finish(engine, step, last_checkpoint, skipped_steps)
        rows = self.grid.rows(self.heads, self.metric)
        if self.data.test:
            from uniemox.finetune.heads import ProbeGrid

            best = ProbeGrid(engine.module.encoder, len(self.classes), len(self.heads)).to(self.run.device).eval()
            best.load_state_dict(self.grid.grid_state())
            best.autocast_dtype = engine.module.autocast_dtype
            pred, _ = self.scorer.predict(best, self.data.test)
            if self.run.rank == 0:
                from uniemox.eval.metrics import primary

                for row, h in zip(rows, self.heads):
                    row[f"test_{self.metric}"] = primary(pred.head(h.index).metrics(self.classes, self.multi))
        if self.run.rank != 0:
            return
        from uniemox.eval.grid_report import markdown_table, write_grid_report

        for row in rows:
            row["chosen"] = row["index"] == self.best["head"]
        paths = write_grid_report(rows, self.scorer.eval_dir, self.metric, {"chosen": self.best["head"], "step": step})
        print(f"probe grid ({len(rows)} heads; chosen on val: {self.heads[self.best['head']].label})\n"
              f"{markdown_table(rows, self.metric)}\n  report: {paths['json']}, {paths['csv']}, {paths['png']}")
