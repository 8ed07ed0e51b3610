"""UniEmoX pretraining: MAE reconstruction + distillation from a frozen CLIP teacher.

  deepspeed launch/pretrain.py --deepspeed configs/zero2.json          # the embedded sample set
  deepspeed launch/pretrain.py --deepspeed configs/zero2.json --config configs/pretrain_emoset_vitl.yaml
      --teacher-weights ViT-B-16.pt data.shards='/data/emoset/train-{000000..000094}.tar'
  deepspeed --hostfile hosts --num_nodes 4 --num_gpus 8 launch/pretrain.py --deepspeed configs/zero2.json ...
  python launch/pretrain.py --resume auto ...                          # continue the run dir's latest
  python launch/pretrain.py --export runs/x/checkpoints/step_00001000 runs/x/export

Reads top to bottom; the pieces live in uniemox/ (config, models, data, train).
"""
import logging
import os
import sys
import zlib

from uniemox.config import apply_overrides, load_config, read_yaml, to_dict
from uniemox.errors import UserError
from uniemox.launch.common import exit_halted, flag_overrides, run_parser

logger = logging.getLogger("uniemox.pretrain")


def parse_args(argv=None):
    p = run_parser("uniemox-pretrain", __doc__, run_dir_help="where logs, reconstructions and checkpoints go",
                   epilog="Overrides: any run-config field as section.key=value, e.g. "
                          "model.name=uniemox_vit_base_patch16 model.mask_ratio=0.9 data.batch_size=128 "
                          "optim.epochs=100 checkpoint.every=1000. See uniemox/train/pretrain_config.py for "
                          "every field and its default.")
    p.add_argument("--init", help="initialise from a facebookresearch/mae or UniEmoX release checkpoint")
    p.add_argument("--teacher-weights", help="CLIP weights file (OpenAI or open_clip layout)")
    p.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "OUT_DIR"),
                   help="write fp32 safetensors of a checkpoint (also ZeRO-3) and exit")
    return p.parse_args(argv)


def build_config(args):
    from uniemox.train.pretrain_config import SAMPLE_PRESET, PretrainConfig

    overrides = flag_overrides(args, ((args.resume, "checkpoint.resume"), (args.init, "model.init"),
                                      (args.teacher_weights, "teacher.weights"), (args.run_dir, "log.run_dir")))
    user = apply_overrides(read_yaml(args.config) if args.config else {}, overrides)
    base = SAMPLE_PRESET if not user.get("data", {}).get("shards") else {}
    return load_config(PretrainConfig, args.config, overrides, base=base), not base


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("uniemox").setLevel(logging.INFO)  # ours at INFO; libraries' INFO chatter off
    try:
        if args.export:
            return export_checkpoint(*args.export)
        cfg, user_data = build_config(args)
        train(cfg, args.ds_config, user_data)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


def export_checkpoint(tag_path, out_dir):
    import json
    from uniemox.train.export import export

    run_config = os.path.join(os.path.dirname(os.path.dirname(tag_path.rstrip("/"))), "config.yaml")
    cfg = read_yaml(run_config) if os.path.isfile(run_config) else {}
    paths = export(tag_path, out_dir, {"run_config": cfg})
    print(json.dumps(paths, indent=1))


def train(cfg, ds_config_path, user_data):
    from uniemox.convert import load_pretrainer_checkpoint
    from uniemox.data import build_pretrain_loader, ensure_sample_shards, epoch_size
    from uniemox.models import create_pretrainer, get_arch
    from uniemox.models.flops import clip_forward_flops_of, uniemox_step_flops
    from uniemox.models.teacher import CLIPTeacher
    from uniemox.train.checkpoint import Checkpointer, find_resume
    from uniemox.train.faults import maybe_kill
    from uniemox.train.engine import build_ds_config, build_engine, build_optimizer, zero_stage
    from uniemox.train.run import start_run
    from uniemox.train.guard import NonFiniteGuard, NonFiniteHalt
    from uniemox.train.metrics import MetricsWriter, StepTimer, device_peak_flops, peak_memory_gib
    from uniemox.train.param_groups import decay_groups
    from uniemox.train.schedule import lr_at, plan_steps, set_lr
    from uniemox.train.step import masking_noise, micro_step
    from uniemox.train.visualize import reconstruction_grid, save_grid

    # -- processes, run directory, config ------------------------------------------------------
    rank, world, device, run_dir, precision, dtype = start_run(cfg)

    # -- data ----------------------------------------------------------------------------------
    shards = cfg.data.shards if user_data else ensure_sample_shards(rank=rank)
    arch = get_arch(cfg.model.name, **cfg.model.arch)
    loader = build_pretrain_loader(shards, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                                   image_size=arch.img_size, shuffle_buffer=cfg.data.shuffle_buffer,
                                   seed=cfg.data.seed, resampled=cfg.data.resampled, rank=rank,
                                   world_size=world)

    # -- teacher (frozen, outside the engine) and student ---------------------------------------
    teacher = CLIPTeacher(cfg.teacher.model, pretrained=cfg.teacher.pretrained, weights=cfg.teacher.weights,
                          device=device, precision=cfg.teacher.precision, input_norm=cfg.teacher.input_norm)
    model = create_pretrainer(cfg.model.name, fusion=cfg.model.fusion, fusion_heads=cfg.model.fusion_heads,
                              proj_dim=teacher.embed_dim, mask_ratio=cfg.model.mask_ratio,
                              losses=cfg.model.losses, contrastive_scope=cfg.model.contrastive_scope,
                              norm_pix_loss=cfg.model.norm_pix_loss, attn_backend=cfg.model.attn_backend,
                              kernel_impl=cfg.model.kernels, **cfg.model.arch)
    if cfg.model.init:
        report = load_pretrainer_checkpoint(model, cfg.model.init)
        if rank == 0:
            logger.info("init from %s: %s", cfg.model.init, report.summary())
    model.attach_teacher(teacher)

    # -- optimisation ---------------------------------------------------------------------------
    global_batch, base_lr, total_steps, warmup = plan_steps(cfg.optim, cfg.data.batch_size, world,
                                                            lambda: epoch_size(shards))
    ds = build_ds_config(ds_config_path, micro_batch=cfg.data.batch_size, grad_accum=cfg.optim.grad_accum,
                         world_size=world, grad_clip=cfg.optim.grad_clip, precision=precision)
    optimizer = build_optimizer(decay_groups(model, cfg.optim.weight_decay), base_lr, cfg.optim.betas, ds, device)
    engine, optimizer = build_engine(model, optimizer, ds)

    # -- resume -----------------------------------------------------------------------------------
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), cfg.checkpoint.keep, rank, world)
    step, skipped_total = 0, 0
    resume_tag = find_resume(ckpt.root, cfg.checkpoint.resume)
    if resume_tag:
        state = ckpt.load(engine, resume_tag)
        step, skipped_total = state["step"], state.get("skipped_steps", 0)
        loader.load_state_dict(state["data"])

    # -- reporting --------------------------------------------------------------------------------
    flops = uniemox_step_flops(arch, cfg.model.mask_ratio, teacher.embed_dim,
                               two_views=model.uses_person_view, decode="reconstruction" in model.components,
                               teacher_forward=clip_forward_flops_of(cfg.teacher.model)).per_sample
    peak = device_peak_flops(device)
    writer = MetricsWriter(run_dir if rank == 0 else None)
    timer, guard = StepTimer(), NonFiniteGuard(cfg.train.max_nonfinite)
    guard.total = skipped_total
    bar = None
    if rank == 0 and cfg.log.progress:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=step, desc="pretrain", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30)  # log files: a line per 30 s
    if rank == 0:
        logger.info("run dir %s | %d steps, global batch %d, lr %.2e, warm-up %d | %s, ZeRO-%d, %d rank(s) "
                    "| TensorBoard: tensorboard --logdir %s", run_dir, total_steps, global_batch, base_lr,
                    warmup, precision, zero_stage(ds), world, os.path.join(run_dir, "tb"))

    def save(at_step):
        return ckpt.save(engine, at_step, {"data": loader.state_dict(), "skipped_steps": guard.total},
                         {"config": to_dict(cfg), "model": cfg.model.name})

    # -- the loop ---------------------------------------------------------------------------------
    batches = loader.endless()
    patches = (arch.img_size // arch.patch_size) ** 2
    sums, count, digests = {}, 0, []
    try:
        while step < total_steps:
            lr = lr_at(step, base_lr, warmup, total_steps, cfg.optim.min_lr)
            set_lr(optimizer, lr)
            step_skipped = False
            for micro in range(cfg.optim.grad_accum):
                batch = next(batches)
                timer.data_ready()
                digests.append(zlib.crc32("\n".join(batch["key"]).encode()))  # which samples, for resume checks
                noise = masking_noise(cfg.train.seed, step, micro, rank, len(batch["key"]), patches, device)
                result = micro_step(engine, batch, noise, device, dtype, nan_loss=step in cfg.train.inject_nan_steps,
                                    nan_grad=step in cfg.train.inject_nan_grad_steps)
                step_skipped |= not result.applied
                for key, value in (result.losses or {}).items():
                    sums[key] = sums.get(key, 0.0) + value
                count += result.losses is not None
            guard.record(step_skipped, step)
            maybe_kill("step", step)
            timer.step_done(cfg.data.batch_size * cfg.optim.grad_accum * world, device)
            step += 1

            if step % cfg.log.every == 0 or step == total_steps:
                values = {f"loss/{k}": v / max(count, 1) for k, v in sums.items()}
                values.update(timer.summary(flops, peak))
                grad_norm = engine.get_global_grad_norm()
                if grad_norm is not None:
                    values["optim/grad_norm"] = float(grad_norm)
                values.update({"optim/lr": lr, "health/skipped_steps": guard.total,
                               "health/skipped_samples": float(loader.skipped)})
                memory = peak_memory_gib(device)
                if memory is not None:
                    values["perf/peak_memory_gib"] = memory
                writer.scalars(values, step, extra={"batch_crc32": digests})
                if bar is not None:
                    bar.set_postfix({"loss": f"{values.get('loss/loss', float('nan')):.4f}",
                                     "lr": f"{lr:.2e}", "sps": f"{values['perf/samples_per_s']:.1f}",
                                     "data": f"{values['perf/data_share']:.0%}", "skip": guard.total})
                sums, count, digests = {}, 0, []
                timer.reset()
            if bar is not None:
                bar.update(1)
            if rank == 0 and cfg.log.image_every and step % cfg.log.image_every == 0 and "pred" in result.out:
                grid = reconstruction_grid(result.scene, result.out["pred"], result.out["mask"], arch.patch_size,
                                           cfg.model.norm_pix_loss)
                os.makedirs(os.path.join(run_dir, "reconstructions"), exist_ok=True)
                save_grid(grid, os.path.join(run_dir, "reconstructions", f"step_{step:08d}.png"))
                writer.image("reconstruction", grid, step)
            if step % cfg.checkpoint.every == 0 and step < total_steps:
                save(step)
    except NonFiniteHalt as halt:
        exit_halted(halt, bar, writer, rank)
    last = save(step)
    if bar is not None:
        bar.close()
    writer.close()
    if rank == 0:
        print(f"done: {step} steps, {guard.total} skipped.\n  TensorBoard:     tensorboard --logdir "
              f"{os.path.join(run_dir, 'tb')}\n  reconstructions: {os.path.join(run_dir, 'reconstructions')}\n"
              f"  checkpoint:      {last}\n  export:          python launch/pretrain.py --export {last} "
              f"{os.path.join(run_dir, 'export')}")


if __name__ == "__main__":
    main()
