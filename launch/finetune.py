"""UniEmoX fine-tuning and linear probing (METHOD §5), DeepSpeed like pretraining.

    deepspeed launch/finetune.py --deepspeed configs/zero2.json --init runs/sample/export   # sample set
    deepspeed launch/finetune.py --init runs/sample/export --linear-probe                    # MAE's probe
    deepspeed launch/finetune.py --data shards/fi --init export/ --label-fraction 0.1 \
        model.name=uniemox_vit_large_patch16 data.batch_size=32
    deepspeed launch/finetune.py --data data/Emotion6 --dataset emotion6 --init export/   # image folder
    python launch/finetune.py --export runs/sample/export timm_encoder/                     # pretrained -> timm

Recipe (fine-tuning, the release's): pooled patch tokens -> LayerNorm -> Linear, drop-path 0.2,
AdamW wd 0.05, lr 1e-3 x batch / 256, 5 warm-up epochs, cosine to 1e-6, layer-wise lr decay 0.75
(declared by the release but never applied there; applied here), RandAugment rand-m9-mstd0.5-inc1,
random erasing 0.25, mixup 0.8, cutmix 1.0, label smoothing 0.1. Linear probe (MAE's): frozen
encoder, CLS token, BatchNorm + Linear head, LARS lr 0.1 x batch / 256, no weight decay, 90 epochs.
Validation after every epoch; the best one is written to RUN_DIR/best (timm layout: loadable with
timm.create_model), then scored on the test split. Metrics: RUN_DIR/eval/*.json, *.png, TensorBoard.
"""
import itertools
import logging
import math
import os
import random
import sys

import numpy as np
import torch

from uniemox.config import apply_overrides, load_config, merge_dicts, read_yaml, to_dict
from uniemox.errors import UserError
from uniemox.launch.common import exit_halted, flag_overrides, run_parser

logger = logging.getLogger("uniemox.finetune")


def parse_args(argv=None):
    p = run_parser("uniemox-finetune", __doc__, run_dir_help="where logs, metrics, checkpoints and best/ go",
                   config_help="run config YAML (recipe < this file < overrides)",
                   epilog="Overrides: any run-config field as section.key=value, e.g. data.batch_size=64 "
                          "optim.epochs=50 aug.mixup=0 eval.every=200. See uniemox/train/finetune_config.py "
                          "for every field.")
    p.add_argument("--data", help="shard-set folder, or a dataset folder/file make_shards reads "
                                  "(default: the embedded sample set)")
    p.add_argument("--dataset", help="split preset when --data is a dataset (emo8, fi, emotion6, ube, caer-s, heco)")
    p.add_argument("--init", help="pretrained encoder: pretraining export dir, .safetensors, MAE/release checkpoint")
    p.add_argument("--linear-probe", action="store_true", help="freeze the encoder, train the head (MAE recipe)")
    p.add_argument("--label-fraction", type=float, help="train on this class-stratified fraction (e.g. 0.1)")
    p.add_argument("--export", nargs=2, metavar=("SOURCE", "OUT_DIR"),
                   help="write a timm export (model.safetensors + config.json) of a pretraining export dir "
                        "or a fine-tuning run dir (its best/) and exit")
    return p.parse_intermixed_args(argv)


def model_from_init(init: str) -> dict:
    """model.name / model.arch of a pretraining or timm export folder (empty for plain files)."""
    import json

    config = os.path.join(init, "config.json")
    if not os.path.isfile(config):
        return {}
    with open(config, encoding="utf-8") as f:
        data = json.load(f)
    if "run_config" in data:
        model = data["run_config"].get("model") or {}
        return {k: model[k] for k in ("name", "arch") if k in model}
    if "architecture" in data:
        return {"name": data["architecture"],
                "arch": {k: v for k, v in (data.get("model_args") or {}).items() if k != "global_pool"}}
    return {}


def build_config(args):
    from uniemox.train.finetune_config import (FINETUNE_RECIPE, LINEAR_PROBE_RECIPE, SAMPLE_PRESET,
                                               SAMPLE_PROBE_PRESET, FinetuneConfig)

    overrides = flag_overrides(args, ((args.data, "data.path"), (args.dataset, "data.dataset"),
                                      (args.init, "model.init"), (args.label_fraction, "data.label_fraction"),
                                      (args.resume, "checkpoint.resume"), (args.run_dir, "log.run_dir")))
    if args.linear_probe:
        overrides.append("train.linear_probe=true")
    user = apply_overrides(read_yaml(args.config) if args.config else {}, list(overrides))
    probe = bool(user.get("train", {}).get("linear_probe"))
    base = LINEAR_PROBE_RECIPE if probe else FINETUNE_RECIPE
    if not user.get("data", {}).get("path"):
        base = merge_dicts(base, merge_dicts(SAMPLE_PRESET, SAMPLE_PROBE_PRESET) if probe else SAMPLE_PRESET)
    init = user.get("model", {}).get("init")
    if init and os.path.isdir(str(init)) and "name" not in user.get("model", {}):
        base = merge_dicts(base, {"model": model_from_init(str(init))})
    return load_config(FinetuneConfig, args.config, overrides, base=base)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("uniemox").setLevel(logging.INFO)
    try:
        if args.export:
            return export(*args.export)
        train(build_config(args), args.ds_config)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


def export(source: str, out_dir: str):
    import json
    import shutil
    from uniemox.models.timm_models import export_pretrained, read_export_config

    if os.path.isfile(os.path.join(source, "best", "config.json")):  # a fine-tuning run dir
        read_export_config(os.path.join(source, "best"))
        shutil.copytree(os.path.join(source, "best"), out_dir, dirs_exist_ok=True)
        paths = {"weights": os.path.join(out_dir, "model.safetensors"), "config": os.path.join(out_dir, "config.json")}
    else:
        paths = export_pretrained(source, out_dir)
    print(json.dumps(paths, indent=1))


def train(cfg, ds_config_path):
    from uniemox.data import build_labeled_loader, ensure_sample_shards
    from uniemox.eval.evaluate import gather, predict_loader
    from uniemox.eval.metrics import primary
    from uniemox.eval.report import write_report
    from uniemox.models import create_encoder, get_arch
    from uniemox.models.timm_models import create_from_export, write_export
    from uniemox.train.augment import FinetuneAugment, build_mixup
    from uniemox.train.checkpoint import Checkpointer, find_resume
    from uniemox.train.classifier import LinearProbe, load_init
    from uniemox.train.faults import maybe_kill
    from uniemox.train.engine import build_ds_config, build_engine, zero_stage
    from uniemox.train.run import start_run
    from uniemox.train.finetune_data import prepare_data
    from uniemox.train.finetune_recipe import (build_criterion, build_torch_optimizer, param_groups,
                                               train_micro_step)
    from uniemox.train.guard import NonFiniteGuard, NonFiniteHalt
    from uniemox.train.metrics import MetricsWriter, StepTimer
    from uniemox.train.schedule import lr_at, scaled_lr, set_lr

    # -- processes, run directory, config ------------------------------------------------------
    rank, world, device, run_dir, precision, dtype = start_run(cfg)
    probe = cfg.train.linear_probe

    # -- data ----------------------------------------------------------------------------------
    data = prepare_data(cfg.data.path, cfg.data.dataset, run_dir, cfg.data.train_split, cfg.data.val_split,
                        cfg.data.test_split, cfg.data.label_fraction, cfg.data.fraction_seed, cfg.data.max_side,
                        world * max(1, cfg.data.num_workers), rank,
                        sample_root=None if cfg.data.path else ensure_sample_shards(rank=rank))
    classes, multi = data.classes, data.multi_label
    arch = get_arch(cfg.model.name, **cfg.model.arch)
    augment = FinetuneAugment(arch.img_size, cfg.aug.train_scale, cfg.aug.rand_augment, cfg.aug.reprob)
    targets_of = len(classes) if multi else None
    train_loader = build_labeled_loader(data.train, cfg.data.batch_size, cfg.data.num_workers, arch.img_size,
                                        train=True, shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.data.seed,
                                        rank=rank, world_size=world, num_classes=targets_of,
                                        view_transform=augment)
    eval_batch = cfg.data.eval_batch_size or cfg.data.batch_size

    def eval_loader(urls):
        return build_labeled_loader(urls, eval_batch, cfg.data.num_workers, arch.img_size, train=False, rank=rank,
                                    world_size=world, num_classes=targets_of)

    # -- model -----------------------------------------------------------------------------------
    encoder = create_encoder(cfg.model.name, num_classes=0 if probe else len(classes),
                             global_pool=cfg.model.global_pool, drop_path_rate=cfg.model.drop_path,
                             attn_backend=cfg.model.attn_backend, **cfg.model.arch)
    if cfg.model.init:
        report = load_init(encoder, cfg.model.init)
        if rank == 0:
            logger.info("init from %s: %s", cfg.model.init, report.summary())
    elif rank == 0:
        logger.warning("no model.init: the encoder starts from RANDOM weights")
    if probe:
        model = LinearProbe(encoder.to(device), len(classes))
        model.autocast_dtype = None if dtype == torch.float32 else dtype
    else:
        model = encoder

    # -- optimisation ---------------------------------------------------------------------------
    global_batch = cfg.data.batch_size * cfg.optim.grad_accum * world
    steps_per_epoch = max(1, data.train_count // global_batch)
    total_steps = cfg.optim.max_steps or math.ceil(cfg.optim.epochs * steps_per_epoch)
    warmup = cfg.optim.warmup_steps or int(cfg.optim.warmup_epochs * steps_per_epoch)
    eval_every = cfg.eval.every or steps_per_epoch
    ckpt_every = cfg.checkpoint.every or eval_every
    base_lr = cfg.optim.lr if cfg.optim.lr is not None else scaled_lr(cfg.optim.blr, global_batch)
    ds = build_ds_config(ds_config_path, micro_batch=cfg.data.batch_size, grad_accum=cfg.optim.grad_accum,
                         world_size=world, grad_clip=cfg.optim.grad_clip, precision=precision)
    groups = param_groups(model, probe, cfg.optim.weight_decay, cfg.optim.layer_decay)
    optimizer = build_torch_optimizer(cfg.optim.name, groups, base_lr, cfg.optim.betas, ds, device)
    engine, optimizer = build_engine(model, optimizer, ds)
    mixup = build_mixup(cfg.aug.mixup, cfg.aug.cutmix, cfg.aug.smoothing, len(classes), multi)
    if mixup is not None and cfg.data.batch_size % 2:
        raise UserError(f"mixup/cutmix pair samples within a batch: data.batch_size must be even, "
                        f"got {cfg.data.batch_size}")
    criterion = build_criterion(multi, mixup is not None, cfg.aug.smoothing)
    # the training stream's randomness (mixup: numpy; drop-path: torch) differs per rank, is seeded,
    # and is restored on resume with the checkpoint's RNG states
    random.seed(cfg.train.seed + rank)
    np.random.seed(cfg.train.seed + rank)
    torch.manual_seed(cfg.train.seed + rank)

    # -- resume -----------------------------------------------------------------------------------
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), cfg.checkpoint.keep, rank, world)
    step, skipped_total, best = 0, 0, {"metric": float("-inf"), "step": None}
    resume_tag = find_resume(ckpt.root, cfg.checkpoint.resume)
    if resume_tag:
        state = ckpt.load(engine, resume_tag if os.sep in resume_tag else os.path.join(ckpt.root, resume_tag))
        step, skipped_total, best = state["step"], state.get("skipped_steps", 0), state["best"]
        train_loader.load_state_dict(state["data"])

    writer = MetricsWriter(run_dir if rank == 0 else None)
    timer, guard = StepTimer(), NonFiniteGuard(cfg.train.max_nonfinite)
    guard.total = skipped_total
    eval_dir, best_dir = os.path.join(run_dir, "eval"), os.path.join(run_dir, "best")
    if rank == 0:
        frac = f", label fraction {data.fraction['kept']}/{data.fraction['of']}" if data.fraction else ""
        logger.info("run dir %s | %s, %d classes%s | %d train samples%s, %d steps (%d/epoch), global batch %d, "
                    "lr %.2e, warm-up %d | %s, ZeRO-%d, %d rank(s)", run_dir, "linear probe" if probe else "fine-tune",
                    len(classes), " (multi-label)" if multi else "", data.train_count, frac, total_steps,
                    steps_per_epoch, global_batch, base_lr, warmup, precision, zero_stage(ds), world)
    bar = None
    if rank == 0 and cfg.log.progress:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=step, desc="linear probe" if probe else "fine-tune", dynamic_ncols=True)

    def classifier_state():
        """The classifier's fp32 state dict (collective under ZeRO-3)."""
        if probe:
            return engine.module.folded_state()
        if zero_stage(ds) == 3:
            return engine._zero3_consolidated_16bit_state_dict()
        return engine.module.state_dict()

    def evaluate(forward, urls, name, tag, at_step, rows=False):
        pred = gather(predict_loader(forward, eval_loader(urls), device, multi))
        if rank != 0:
            return None
        metrics = pred.metrics(classes, multi)
        write_report(metrics, eval_dir, name, writer, at_step, tag=tag,
                     predictions=pred.rows(classes, cfg.eval.top_k, multi) if rows else None, echo=bar is None)
        return metrics

    def validate(at_step):
        engine.module.eval()
        metrics = evaluate(lambda x: engine.module(x.to(dtype)), data.val, f"val_step_{at_step:08d}", "val", at_step)
        engine.module.train()
        value = torch.tensor([primary(metrics) if rank == 0 else 0.0])
        if world > 1:
            torch.distributed.broadcast(value, 0)
        return float(value), metrics

    def save_best(at_step, metrics):
        state = classifier_state()
        if rank == 0:
            extra = {"step": at_step, "task": "multi_label" if multi else "single_label",
                     "recipe": "linear_probe" if probe else "finetune", "init": cfg.model.init,
                     "val": {k: metrics[k] for k in ("top1", "top3", "macro_f1", "mAP") if k in metrics} if metrics else None}
            write_export(state, best_dir, cfg.model.name, dict(cfg.model.arch), len(classes),
                         "token" if probe else cfg.model.global_pool, classes, extra)
        if world > 1:
            torch.distributed.barrier()

    def save(at_step):
        return ckpt.save(engine, at_step, {"data": train_loader.state_dict(), "skipped_steps": guard.total,
                                           "best": best}, {"config": to_dict(cfg), "model": cfg.model.name})

    # -- the loop ---------------------------------------------------------------------------------
    batches = train_loader.endless()
    with torch.random.fork_rng(devices=[]):  # the DataLoader seeds its workers from the global RNG:
        batches = itertools.chain([next(batches)], batches)  # keep that draw out of a resumed run's stream
    loss_sum, loss_count = 0.0, 0
    try:
        while step < total_steps:
            lr = lr_at(step, base_lr, warmup, total_steps, cfg.optim.min_lr)
            set_lr(optimizer, lr)
            step_skipped = False
            for _ in range(cfg.optim.grad_accum):
                batch = next(batches)
                timer.data_ready()
                images = batch["image"].to(device, non_blocking=True)
                target = (batch["targets"] if multi else batch["label"]).to(device, non_blocking=True)
                if mixup is not None:
                    images, target = mixup(images, target)
                result = train_micro_step(engine, images, target, criterion, dtype)
                step_skipped |= not result.applied
                if result.loss is not None:
                    loss_sum, loss_count = loss_sum + result.loss, loss_count + 1
            guard.record(step_skipped, step)
            timer.step_done(global_batch, device)
            step += 1
            if step % cfg.log.every == 0 or step == total_steps:
                values = {"loss/train": loss_sum / max(loss_count, 1), "optim/lr": lr,
                          "health/skipped_steps": guard.total}
                values.update(timer.summary(None, None))
                writer.scalars(values, step)
                if bar is not None:
                    bar.set_postfix({"loss": f"{values['loss/train']:.4f}", "lr": f"{lr:.2e}",
                                     "best": f"{best['metric']:.4f}" if best["step"] else "-"})
                loss_sum, loss_count = 0.0, 0
                timer.reset()
            if bar is not None:
                bar.update(1)
            if data.val and (step % eval_every == 0 or step == total_steps):
                value, metrics = validate(step)
                if value > best["metric"]:
                    best = {"metric": value, "step": step}
                    save_best(step, metrics)
                if rank == 0:
                    logger.info("step %d: val %s %.4f (best %.4f at step %d)", step, "mAP" if multi else "top-1",
                                value, best["metric"], best["step"])
            if step % ckpt_every == 0 and step < total_steps:
                save(step)
            maybe_kill("step", step)  # fault injection for the resume tests (UNIEMOX_FAULT)
    except NonFiniteHalt as halt:
        exit_halted(halt, bar, writer, rank)
    last = save(step)
    if bar is not None:
        bar.close()
    if not data.val or best["step"] is None:
        if rank == 0:
            logger.warning("no validation split: best/ holds the final weights")
        save_best(step, None)

    # -- test with the best weights, loaded back through timm --------------------------------------
    test = None
    if data.test:
        best_model, _ = create_from_export(best_dir)
        best_model.to(device)
        test = evaluate(best_model, data.test, "test", "test", step, rows=True)
    writer.close()
    if rank == 0:
        headline = "mAP" if multi else "top1"
        print(f"done: {step} steps, {guard.total} skipped; best val {headline} "
              f"{best['metric']:.4f} at step {best['step']}" if best["step"] else f"done: {step} steps")
        if test is not None:
            print(f"  test {headline}: {test[headline]:.4f}  ({os.path.join(eval_dir, 'test.json')})")
        print(f"  best model:  {best_dir}  (timm.create_model('local-dir:{best_dir}', pretrained=True))\n"
              f"  checkpoint:  {last}\n  TensorBoard: tensorboard --logdir {os.path.join(run_dir, 'tb')}\n"
              f"  predict:     python launch/predict.py --model {best_dir} IMAGE...")


if __name__ == "__main__":
    main()
