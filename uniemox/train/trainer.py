"""The training loop: one for every task (uniemox.tasks), read top to bottom.

    Trainer(cfg, PretrainTask, deepspeed_config).fit()

The trainer joins the process group, lets the task build its data and model, wraps the model in
a DeepSpeed engine, resumes, then steps: learning rate, gradient accumulation over guarded
micro-steps, the non-finite guard, the report, the task's per-step work, evaluation and
checkpoints at their cadence, and finally a last checkpoint and the task's finish. Extension
points: ``step_end_callbacks`` (called with the step after everything of that step is done) and
the opt-in fault hooks of hooks.py.
"""
import contextlib
import logging
import os
import time
from typing import Dict

import torch

from uniemox.config import save_config, to_dict
from uniemox.errors import UserError

from . import hooks
from .checkpoint import MARKER, Checkpointer, complete_tags, find_resume, read_marker, resume_conflicts, tag_for
from .compiling import compile_engine
from .elastic import plan_elastic
from .engine import build_ds_config, build_engine, read_ds_config, zero_stage
from .guard import NonFiniteGuard
from .metrics import MetricsWriter, SampleLog, device_peak_flops
from .preemption import Interrupted, Preempted, PreemptionWatch
from .reporting import Reporter
from .run import hold_run_dir, start_run
from .schedule import lr_at, plan_steps, set_lr
from .step import guarded_micro_step

logger = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg, task_cls, deepspeed_config: str):
        self.cfg = cfg
        self.preemption = PreemptionWatch()  # first: a signal from now on ends the run with a checkpoint
        self.claim = None
        try:
            self.build(task_cls, deepspeed_config)
        except BaseException:  # the handlers and the claim given back: the process may go on
            self.close()
            raise

    def build(self, task_cls, deepspeed_config: str) -> None:
        """The run, its data, model, plan, engine and components (the order matters)."""
        cfg = self.cfg
        self.run = run = start_run(cfg)
        self.claim = hold_run_dir(run)
        self.preemption.join(run.world)
        ckpt_root = os.path.join(run.run_dir, "checkpoints")
        self.resume_from = find_resume(ckpt_root, cfg.checkpoint.resume)
        self.resume_marker = marker = read_marker(self.resume_from) if self.resume_from else {}
        self.elastic = plan_elastic(self.resume_from, marker, run.world, cfg.data.batch_size) if marker else None
        if self.elastic:  # another world size: the global batch stays (elastic.py)
            cfg.optim.grad_accum = self.elastic.grad_accum
        self.task = task = task_cls(cfg, run)
        self.loader = task.build_data()
        model = task.build_model()
        self.plan = plan_steps(cfg.optim, cfg.data.batch_size, run.world, task.epoch_samples)
        self.config_stage = zero_stage(read_ds_config(deepspeed_config))
        resumed_stages = (marker["zero_stage_config"], marker["zero_stage"]) if "zero_stage_config" in marker else None
        self.ds = build_ds_config(deepspeed_config, micro_batch=cfg.data.batch_size, grad_accum=cfg.optim.grad_accum,
                                  world_size=run.world, grad_clip=cfg.optim.grad_clip, precision=run.precision,
                                  single_rank_stage0=cfg.train.single_rank_stage0, resumed_stages=resumed_stages,
                                  load_universal=bool(self.elastic and self.elastic.universal))
        optimizer = task.build_optimizer(task.param_groups(model), self.plan.base_lr, self.ds)
        self.engine, self.optimizer = build_engine(model, optimizer, self.ds)
        if cfg.train.compile:
            compile_engine(self.engine, cfg.train.compile_mode, task)
        task.before_training(self.engine)

        self.eval_every = task.eval_every(self.plan)
        ckpt_every = cfg.checkpoint.every or self.eval_every or self.plan.steps_per_epoch or 0
        self.checkpointer = Checkpointer(ckpt_root, cfg.checkpoint.keep, run.rank, run.world, every=ckpt_every)
        self.guard = NonFiniteGuard(cfg.train.max_nonfinite, run.device)
        self.step = 0
        self.eval_pending = False  # an evaluation a signal cut short: the resumed run does it first
        self.step_end_callbacks = []
        hooks.install(self)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> None:
        cfg, task, engine, plan, guard = self.cfg, self.task, self.engine, self.plan, self.guard
        try:
            self.resume()
            self.start_report()
            batches = self.batches()
            if self.eval_pending:
                self.evaluate()
            while self.step < plan.total_steps:
                lr = lr_at(self.step, plan.base_lr, plan.warmup_steps, plan.total_steps, cfg.optim.min_lr)
                set_lr(self.optimizer, lr)
                loss_bad = guard.zero
                for micro in range(cfg.optim.grad_accum):
                    batch = self.first_batch(batches) if micro == 0 else self.next_batch(batches)
                    self.samples.write(self.step + 1, micro, batch)
                    ctx = task.context(self.step, micro)
                    result = guarded_micro_step(engine, lambda: task.training_forward(engine, batch, ctx),
                                                guard.one, guard.zero)
                    self.reporter.add(result.scalars, result.loss_finite)
                    loss_bad = torch.maximum(loss_bad, (~result.loss_finite).float())
                guard.record(result.skipped, loss_bad, self.step)  # nothing is read back: see guard.py
                self.step += 1
                self.report(lr)
                task.after_step(self.step)
                if self.evaluation_due():
                    self.evaluate()
                if self.checkpointer.due(self.step, plan.total_steps):
                    self.save()
                for callback in self.step_end_callbacks:
                    callback(self.step)
            if self.preemption.agreed():  # an evaluation at the last step was cut short
                self.stop(self.loader.state_dict())
            last = self.save()
        except BaseException:  # a halt or a preemption: the last good checkpoint stays the newest one
            if hasattr(self, "reporter"):
                self.reporter.close_progress()
            self.close()
            raise
        self.reporter.close_progress()
        task.finish(engine, self.step, last, self.guard.total)
        self.close()

    # -- its parts, in the order they act ------------------------------------------------------------
    def record(self) -> Dict:
        """What a checkpoint's marker says of the run: its config, task and ZeRO stage (as run, and
        as the DeepSpeed JSON gave it)."""
        return {"config": to_dict(self.cfg), "task": type(self.task).__name__, "zero_stage": zero_stage(self.ds),
                "zero_stage_config": self.config_stage}

    def resume(self) -> None:
        """Continue from ``checkpoint.resume`` (auto: the newest complete checkpoint, if any), once
        the checkpoint is known to fit this run; on another world size through elastic.py. A
        fresh run never starts over a run dir's checkpoints. The run's config.yaml (its record)
        is written only then."""
        root, task, path = self.checkpointer.root, self.task, self.resume_from
        if path:
            conflicts = resume_conflicts(self.resume_marker, self.record(), task.resume_must_match,
                                         task.resume_may_differ)
            if conflicts:
                raise UserError(f"cannot resume from {path}: it was written with another configuration "
                                f"({'; '.join(conflicts)}); resume with its settings, or start a new --run-dir")
            if self.elastic:
                state, data_states = self.checkpointer.load_elastic(self.engine, self.elastic)
                self.loader.load_elastic(data_states)
            else:
                state = self.checkpointer.load(self.engine, path)
                self.loader.load_state_dict(state["data"])
            self.step, self.guard.base = state["step"], state.get("skipped_steps", 0)
            self.eval_pending = state.get("eval_pending", False)
            task.load_state_dict(state)
        elif complete_tags(root):
            raise UserError(f"{self.run.run_dir} already holds a run (checkpoint {complete_tags(root)[-1]}): "
                            f"--resume auto continues it, or give another --run-dir")
        if self.run.rank == 0:
            save_config(self.cfg, os.path.join(self.run.run_dir, "config.yaml"))

    def start_report(self) -> None:
        run, plan, task = self.run, self.plan, self.task
        self.writer = MetricsWriter(run.run_dir if run.rank == 0 else None, start_step=self.step,
                                    report_to=self.cfg.log.report_to, log=self.cfg.log, run_config=to_dict(self.cfg))
        self.samples = SampleLog(run.run_dir, run.rank, run.world, self.step, self.cfg.log.sample_keys)
        self.writer.before_write = self.preemption.settle
        task.writer = self.writer
        progress = task.name if run.rank == 0 and self.cfg.log.progress else None
        self.reporter = Reporter(self.writer, self.cfg.log.every, plan.total_steps, task.report_first_step,
                                 progress, initial_step=self.step)
        self.flops, self.peak = task.flops_per_sample(), device_peak_flops(run.device)
        if run.rank == 0:
            logger.info("run dir %s | %s | %d steps, global batch %d, lr %.2e, warm-up %d | %s, ZeRO-%d, %d rank(s) "
                        "| %s", run.run_dir, task.describe(), plan.total_steps, plan.global_batch, plan.base_lr,
                        plan.warmup_steps, run.precision, zero_stage(self.ds), run.world, self.writer.where)

    def batches(self):
        """The loader's endless stream. Its DataLoader seeds workers from the global RNG on the
        first batch: that draw is kept out of the run's RNG streams, so a resumed run draws as
        an uninterrupted one."""
        stream = self.loader.endless()
        with torch.random.fork_rng(devices=[]):
            first = next(stream)
        yield first
        yield from stream

    def report(self, lr: float) -> None:
        def extra():
            values = self.reporter.timer.summary(self.flops, self.peak)
            grad_norm = self.engine.get_global_grad_norm()
            if grad_norm is not None:
                values["optim/grad_norm"] = float(grad_norm)
            values.update({"optim/lr": lr, "health/skipped_steps": self.guard.total,
                           "health/skipped_samples": float(self.loader.skipped)})
            return values

        def postfix(values):
            return dict({"loss": f"{values.get(self.task.loss_name, float('nan')):.4f}", "lr": f"{lr:.2e}",
                         "sps": f"{values['perf/samples_per_s']:.1f}", "data": f"{values['perf/data_share']:.0%}",
                         "skip": self.guard.total}, **self.task.progress_fields(values))

        samples = self.cfg.data.batch_size * self.cfg.optim.grad_accum * self.run.world
        if self.reporter.due(self.step):
            self.guard.check()  # the one read of the skip counters in a report interval
        values = self.reporter.step_done(self.step, samples, self.run.device, extra, postfix)
        if values is not None:
            self.task.on_report(self.step, values)

    def evaluation_due(self) -> bool:
        every = self.eval_every
        return every is not None and (self.step == self.plan.total_steps or (every > 0 and self.step % every == 0))

    def first_batch(self, batches):
        """The step's first batch, unless the ranks agree to stop before the step (preemption.py):
        the wait for it is where a stalled data source keeps a run, so a signal cuts it short."""
        before = self.loader.state_dict()  # the position a stop here saves: the batch is not used
        batch = None
        try:
            with self.preemption.interruptible():
                batch = self.next_batch(batches)
        except Interrupted:
            pass
        if self.preemption.agreed():
            self.stop(before)
        return batch

    def next_batch(self, batches):
        asked = time.perf_counter()
        batch = next(batches)
        self.reporter.batch(batch["key"], time.perf_counter() - asked)
        return batch

    def evaluate(self) -> None:
        """In a world of one a signal cuts an evaluation short until it logs its results (redone
        first on resume); with several ranks it finishes, as every rank must reach its gathers."""
        region = self.preemption.interruptible() if self.run.world == 1 else contextlib.nullcontext()
        self.eval_pending = True
        try:
            with region:
                values = self.task.evaluate(self.engine, self.step)
        except Interrupted:
            return
        self.eval_pending = False
        if values:
            self.writer.scalars(values, self.step)
        self.reporter.timer.reset()  # evaluation time is not training throughput

    def save(self, data_state=None) -> str:
        self.guard.check()  # a checkpoint is never written past a halt
        state = dict(self.task.state_dict(), data=data_state or self.loader.state_dict(),
                     skipped_steps=self.guard.total, eval_pending=self.eval_pending)
        meta = dict(self.task.checkpoint_meta(self.step), **self.record())
        return self.checkpointer.save(self.engine, self.step, state, meta)

    def stop(self, data_state) -> None:
        """Collective, on a signal: a checkpoint at the step reached (unless there is one, or
        nothing was trained), then Preempted."""
        path = os.path.join(self.checkpointer.root, tag_for(self.step))
        if os.path.isfile(os.path.join(path, MARKER)):
            pass  # saved at this very step already (a periodic save, or the checkpoint resumed from)
        elif self.step > 0:
            path = self.save(data_state)
        else:
            path = None
        raise Preempted(self.preemption.signal, self.step, path)

    def close(self) -> None:
        """The run's files closed, its signal handlers and run-dir claim given back."""
        for part in (getattr(self, "writer", None), getattr(self, "samples", None)):
            if part is not None:
                part.close()
        self.preemption.close()
        if self.claim is not None:
            self.claim.release()
