"""Train or adapt a CLIP teacher: contrastive image-text training (CLIP's symmetric InfoNCE with a
learned temperature) of an open_clip model on captioned shards (METHOD §1 captions built from each
sample's attributes and emotion), the scene view as the image.

    python launch/train_teacher.py                      # the tiny teacher on the embedded sample set
    deepspeed launch/train_teacher.py --deepspeed configs/zero2.json model.name=ViT-B-16-quickgelu \
        model.weights=ViT-B-16.pt data.shards='/data/emo/train-{000000..000099}.tar' \
        eval.shards='/data/emo/val-{000000..000009}.tar' optim.lr=1e-5 optim.max_steps=2000   # adapt
    python launch/train_teacher.py --export runs/teacher/checkpoints/step_00000400 teacher.safetensors

The result is a CLIP weights file for the pretraining teacher:
    deepspeed launch/pretrain.py ... teacher.model=NAME --teacher-weights runs/teacher/export/teacher.safetensors
Reads top to bottom; the pieces are the pretraining run's own (uniemox/train, uniemox/data).
"""
import copy
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from uniemox.config import apply_overrides, load_config, read_yaml, to_dict
from uniemox.errors import UserError
from uniemox.launch.common import exit_halted, flag_overrides, run_parser

logger = logging.getLogger("uniemox.train_teacher")
CARD_FORMAT = "uniemox-clip-teacher-v1"
REPORTED = {"loss": "loss/loss", "batch_accuracy": "train/batch_accuracy", "logit_scale": "train/logit_scale"}


def parse_args(argv=None):
    p = run_parser("uniemox-train-teacher", __doc__,
                   run_dir_help="where logs, checkpoints and the exported weights go",
                   epilog="Overrides: any run-config field as section.key=value, e.g. model.name=ViT-B-16 "
                          "data.batch_size=256 data.emotion_only_prob=0.3 optim.max_steps=5000. "
                          "See uniemox/train/teacher_config.py.")
    p.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "OUT_FILE"),
                   help="write the CLIP weights of a checkpoint as safetensors (+ .json card) and exit")
    return p.parse_intermixed_args(argv)  # overrides may come before and after flags


def build_config(args):
    from uniemox.train.teacher_config import SAMPLE_PRESET, TeacherTrainConfig

    overrides = flag_overrides(args, ((args.resume, "checkpoint.resume"), (args.run_dir, "log.run_dir")))
    user = apply_overrides(read_yaml(args.config) if args.config else {}, overrides)
    # a copy: load_config merges overrides into nested dicts of `base` in place
    base = copy.deepcopy(SAMPLE_PRESET) if not user.get("data", {}).get("shards") else {}
    cfg = load_config(TeacherTrainConfig, args.config, overrides, base=base)
    if not 0.0 <= cfg.data.emotion_only_prob <= 1.0:  # checked before any process starts
        raise UserError(f"data.emotion_only_prob must be in [0, 1], got {cfg.data.emotion_only_prob}")
    if cfg.export.dtype not in ("fp16", "fp32"):
        raise UserError(f"export.dtype must be fp16 or fp32, got {cfg.export.dtype!r}")
    return cfg, not base


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("uniemox").setLevel(logging.INFO)
    try:
        if args.export:
            card = export_weights(args.export[0], args.export[1])
            print(json.dumps({k: card[k] for k in ("weights", "model", "bytes")}, indent=1))
            return
        cfg, user_data = build_config(args)
        argv = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--local_rank")]
        train(cfg, args.ds_config, user_data, argv)  # argv: the command, for the weights' card
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


class ContrastiveCLIP(nn.Module):
    """The open_clip model in training, fed like the frozen teacher will be (`ImageInput`).
    forward(images, person, texts, *noise) has the pretrainer's signature so the shared micro-step
    (non-finite guards, fault injection) drives it; the person view and noise are not used.
    Everything goes through `clip(...)`, so ZeRO-3 gathers the parameters it touches."""

    def __init__(self, clip: nn.Module, tokenizer, input_norm: str):
        super().__init__()
        from uniemox.models.teacher import ImageInput

        self.clip, self.tokenizer, self.image_input = clip, tokenizer, ImageInput(clip, input_norm)
        # DeepSpeed cannot broadcast 0-dim parameters; [1] loads back into any CLIP (load_checked)
        clip.logit_scale = nn.Parameter(clip.logit_scale.detach().reshape(1))

    def encode(self, images: Optional[torch.Tensor] = None, texts: Optional[Sequence[str]] = None):
        """(normalised image features or None, normalised text features or None, exp(logit scale))."""
        device = self.clip.logit_scale.device
        tokens = self.tokenizer(list(texts)).to(device) if texts is not None else None
        return self.clip(image=self.image_input(images) if images is not None else None, text=tokens)[:3]

    def forward(self, images, person=None, texts=None, *_noise, encode_only: bool = False):
        from uniemox.losses.clip_contrastive import clip_contrastive_loss

        if encode_only:
            return self.encode(images, texts)
        image, text, scale = self.encode(images, texts)
        loss = clip_contrastive_loss(image, text, scale)
        with torch.no_grad():  # image -> caption top-1 in the batch; a copy of its own caption counts
            best = (image @ text.t()).argmax(1).tolist()
            hits = sum(texts[j] == texts[i] for i, j in enumerate(best))
        return {"loss": loss, "batch_accuracy": torch.tensor(hits / len(best)), "logit_scale": scale.detach()}


def shorten_captions(texts: List[str], prob: float, seed: int, step: int, micro: int, rank: int) -> List[str]:
    """Cut each caption to its emotion sentence with probability `prob`; draws depend on
    (seed, step, micro, rank) alone, so a resumed run makes the same choices."""
    from uniemox.data import emotion_prompt

    if prob <= 0:
        return texts
    marker = emotion_prompt("{}").split("{}")[0]
    gen = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 64 + micro) * 4096 + rank + 17)
    draws = torch.rand(len(texts), generator=gen).tolist()
    return [t[t.rfind(marker):] if d < prob and marker in t else t for t, d in zip(texts, draws)]


def eval_setup(cfg, sample_root: Optional[str]):
    """(shard urls, class names) for zero-shot evaluation, or (None, None) when there is none."""
    from uniemox.data import expand_urls, load_manifest, shard_urls

    if cfg.eval.every < 0:
        return None, None
    if cfg.eval.shards:
        urls = expand_urls(cfg.eval.shards)
    elif sample_root:
        urls = shard_urls(sample_root, ("val",))
    else:
        return None, None
    classes = cfg.eval.classes or load_manifest(os.path.dirname(urls[0])).get("classes")
    if not classes:
        raise UserError("eval.classes is not set and the eval shards' manifest lists no classes")
    return urls, list(classes)


def zero_shot(engine, urls, classes, image_size: int, batch_size: int, device, dtype) -> Dict[str, float]:
    """Zero-shot accuracy with "The overall emotion conveyed is {class}." prompts. Every rank runs
    the whole eval set (ZeRO-3 needs every rank in every forward); rank 0 reports."""
    from uniemox.data import build_labeled_loader
    from uniemox.models.teacher import zero_shot_accuracy

    loader = build_labeled_loader(urls, batch_size, num_workers=min(2, len(urls)), image_size=image_size)
    engine.eval()
    try:
        acc, n = zero_shot_accuracy(lambda x: engine(x.to(device, dtype), encode_only=True)[0],
                                    lambda t: engine(None, None, t, encode_only=True)[1], loader, classes)
    finally:
        engine.train()
    return {"eval/zero_shot_accuracy": acc, "eval/images": float(n)}


def export_weights(tag_path: str, out_file: str, dtype: str = "fp16", card: Optional[Dict] = None) -> Dict:
    """The CLIP state dict of a checkpoint (any ZeRO stage) as safetensors, plus a JSON card with
    the same stem; returns the card. Loadable with CLIPTeacher(weights=out_file)."""
    from safetensors.torch import save_file
    from uniemox.train.export import fp32_state_from_checkpoint

    if dtype not in ("fp16", "fp32"):
        raise UserError(f"export.dtype must be fp16 or fp32, got {dtype!r}")
    state = fp32_state_from_checkpoint(tag_path)
    clip = {k[len("clip."):]: v.to(torch.float16 if dtype == "fp16" else torch.float32).contiguous()
            for k, v in state.items() if k.startswith("clip.")}
    if not clip:
        raise UserError(f"{tag_path} holds no CLIP weights (not a train_teacher checkpoint?)")
    if card is None:  # the card the run left in the checkpoint's marker (train() puts it there)
        marker = Path(tag_path) / "COMPLETE"
        card = json.loads(marker.read_text(encoding="utf-8")).get("card", {}) if marker.is_file() else {}
    out = Path(out_file).with_suffix(".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(clip, str(tmp), metadata={"format": CARD_FORMAT, "model": str(card.get("model", ""))})
    os.replace(tmp, out)
    os.chmod(out, 0o644)  # a package data file: readable by every user of an install
    card = dict(card, format=CARD_FORMAT, weights=out.name, dtype=dtype, bytes=out.stat().st_size,
                sha256=hashlib.sha256(out.read_bytes()).hexdigest())
    out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    return card


def train(cfg, ds_config_path, user_data, argv):
    import open_clip
    import torch.distributed as dist
    from uniemox.data import build_pretrain_loader, ensure_sample_shards, epoch_size
    from uniemox.models.teacher_weights import build_clip
    from uniemox.train.checkpoint import Checkpointer, find_resume
    from uniemox.train.engine import build_ds_config, build_engine, build_optimizer, zero_stage
    from uniemox.train.run import start_run
    from uniemox.train.faults import maybe_kill
    from uniemox.train.guard import NonFiniteGuard, NonFiniteHalt
    from uniemox.train.metrics import MetricsWriter, StepTimer, peak_memory_gib
    from uniemox.train.param_groups import decay_groups
    from uniemox.train.schedule import lr_at, plan_steps, set_lr
    from uniemox.train.step import micro_step

    # -- processes, run directory, config ------------------------------------------------------
    rank, world, device, run_dir, precision, dtype = start_run(cfg)

    # -- the model (trainable open_clip, from scratch or from weights) ---------------------------
    clip, source = build_clip(cfg.model.name, pretrained=cfg.model.pretrained, weights=cfg.model.weights)
    clip.requires_grad_(True)
    model = ContrastiveCLIP(clip, open_clip.get_tokenizer(cfg.model.name), cfg.model.input_norm)
    image_size = model.image_input.image_size[0]

    # -- data: captioned scene views at the model's image size ----------------------------------
    sample_root = None if user_data else ensure_sample_shards(rank=rank)
    shards = cfg.data.shards if user_data else sample_root
    loader = build_pretrain_loader(shards, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                                   image_size=image_size, shuffle_buffer=cfg.data.shuffle_buffer,
                                   seed=cfg.data.seed, resampled=cfg.data.resampled, rank=rank, world_size=world,
                                   person_view=False)  # the teacher sees the scene view only
    eval_urls, classes = eval_setup(cfg, sample_root)

    # -- optimisation ---------------------------------------------------------------------------
    global_batch, base_lr, total_steps, warmup = plan_steps(cfg.optim, cfg.data.batch_size, world,
                                                            lambda: epoch_size(shards))
    ds = build_ds_config(ds_config_path, micro_batch=cfg.data.batch_size, grad_accum=cfg.optim.grad_accum,
                         world_size=world, grad_clip=cfg.optim.grad_clip, precision=precision)
    optimizer = build_optimizer(decay_groups(model, cfg.optim.weight_decay), base_lr, cfg.optim.betas, ds, device)
    engine, optimizer = build_engine(model, optimizer, ds)

    # -- resume -----------------------------------------------------------------------------------
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), cfg.checkpoint.keep, rank, world)
    step, skipped_total, first_loss = 0, 0, None
    resume_tag = find_resume(ckpt.root, cfg.checkpoint.resume)
    if resume_tag:
        state = ckpt.load(engine, resume_tag if os.path.isabs(resume_tag) or os.sep in resume_tag
                          else os.path.join(ckpt.root, resume_tag))
        step, skipped_total, first_loss = state["step"], state.get("skipped_steps", 0), state.get("first_loss")
        loader.load_state_dict(state["data"])

    # -- reporting --------------------------------------------------------------------------------
    writer = MetricsWriter(run_dir if rank == 0 else None)
    timer, guard = StepTimer(), NonFiniteGuard(cfg.train.max_nonfinite)
    guard.total = skipped_total
    bar = None
    if rank == 0 and cfg.log.progress:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=step, desc="teacher", dynamic_ncols=True)
    if rank == 0:
        logger.info("run dir %s | %s from %s | %d steps, global batch %d, lr %.2e, warm-up %d | %s, ZeRO-%d, "
                    "%d rank(s) | zero-shot eval: %s | TensorBoard: tensorboard --logdir %s", run_dir,
                    cfg.model.name, source, total_steps, global_batch, base_lr, warmup, precision, zero_stage(ds),
                    world, f"{len(eval_urls)} shard(s), {len(classes)} classes" if eval_urls else "none",
                    os.path.join(run_dir, "tb"))

    def evaluate(at_step):
        if not eval_urls:
            return {}
        values = zero_shot(engine, eval_urls, classes, image_size, cfg.eval.batch_size, device, dtype)
        writer.scalars(values, at_step)
        if rank == 0:
            logger.info("step %d: zero-shot accuracy %.4f on %d images", at_step, values["eval/zero_shot_accuracy"],
                        int(values["eval/images"]))
        return values

    def save(at_step, card=None):
        meta = {"config": to_dict(cfg), "model": cfg.model.name, "card": card or {}}
        return ckpt.save(engine, at_step, {"data": loader.state_dict(), "skipped_steps": guard.total,
                                           "first_loss": first_loss}, meta)

    # -- the loop ---------------------------------------------------------------------------------
    batches = loader.endless()
    no_noise = torch.zeros(2, 0, 0)
    sums, count, last_loss = {}, 0, None
    try:
        while step < total_steps:
            lr = lr_at(step, base_lr, warmup, total_steps, cfg.optim.min_lr)
            set_lr(optimizer, lr)
            step_skipped = False
            for micro in range(cfg.optim.grad_accum):
                batch = next(batches)
                timer.data_ready()
                batch["text"] = shorten_captions(batch["text"], cfg.data.emotion_only_prob, cfg.train.seed,
                                                 step, micro, rank)
                result = micro_step(engine, batch, no_noise, device, dtype, nan_loss=step in cfg.train.inject_nan_steps,
                                    nan_grad=step in cfg.train.inject_nan_grad_steps)
                step_skipped |= not result.applied
                if result.losses is not None:
                    for key in ("batch_accuracy", "logit_scale"):
                        result.losses[key] = float(result.out[key])
                    for key, value in result.losses.items():
                        sums[key] = sums.get(key, 0.0) + value
                    count += 1
            guard.record(step_skipped, step)
            maybe_kill("step", step)
            timer.step_done(cfg.data.batch_size * cfg.optim.grad_accum * world, device)
            step += 1
            if step == 1 and count:
                first_loss = sums["loss"] / count  # the reproducibility check of a shipped teacher

            if step % cfg.log.every == 0 or step in (1, total_steps):
                values = {REPORTED[k]: v / max(count, 1) for k, v in sums.items()}
                values.update(timer.summary(None, None))
                grad_norm = engine.get_global_grad_norm()
                if grad_norm is not None:
                    values["optim/grad_norm"] = float(grad_norm)
                values.update({"optim/lr": lr, "health/skipped_steps": guard.total,
                               "health/skipped_samples": float(loader.skipped)})
                memory = peak_memory_gib(device)
                if memory is not None:
                    values["perf/peak_memory_gib"] = memory
                writer.scalars(values, step)
                last_loss = values.get("loss/loss", last_loss)
                if bar is not None:
                    bar.set_postfix({"loss": f"{values.get('loss/loss', float('nan')):.4f}",
                                     "acc": f"{values.get('train/batch_accuracy', float('nan')):.2f}",
                                     "lr": f"{lr:.2e}", "sps": f"{values['perf/samples_per_s']:.1f}"})
                sums, count = {}, 0
                timer.reset()
            if bar is not None:
                bar.update(1)
            if cfg.eval.every > 0 and step % cfg.eval.every == 0 and step < total_steps:
                evaluate(step)
                timer.reset()
            if step % cfg.checkpoint.every == 0 and step < total_steps:
                save(step)
    except NonFiniteHalt as halt:
        exit_halted(halt, bar, writer, rank)
    if bar is not None:
        bar.close()

    # -- final evaluation, checkpoint, weights + card -------------------------------------------
    final = evaluate(step)
    card = {"model": cfg.model.name, "init": source, "input_norm": cfg.model.input_norm,
            "command": "python launch/train_teacher.py " + " ".join(argv), "seed": cfg.train.seed,
            "steps": step, "first_step_loss": first_loss, "last_report_loss": last_loss,
            "zero_shot": ({"accuracy": final["eval/zero_shot_accuracy"], "images": int(final["eval/images"]),
                           "prompt": "The overall emotion conveyed is {class}.", "classes": classes,
                           "shards": "sample set, val split" if not cfg.eval.shards else cfg.eval.shards}
                          if final else None),
            "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
            "config": to_dict(cfg)}
    last = save(step, card)
    writer.close()
    if rank == 0:
        outputs = [export_weights(last, os.path.join(run_dir, "export", "teacher.safetensors"), cfg.export.dtype, card)]
        if cfg.export.path:
            outputs.append(export_weights(last, cfg.export.path, cfg.export.dtype, card))
        weights = os.path.join(run_dir, "export", "teacher.safetensors")
        print(f"done: {step} steps, {guard.total} skipped, zero-shot accuracy "
              f"{final.get('eval/zero_shot_accuracy', float('nan')):.4f}.\n"
              f"  TensorBoard: tensorboard --logdir {os.path.join(run_dir, 'tb')}\n"
              f"  weights:     {weights} ({outputs[0]['bytes'] / 2**20:.1f} MiB, {cfg.export.dtype})\n"
              f"  use:         deepspeed launch/pretrain.py ... teacher.model={cfg.model.name} "
              f"teacher.input_norm={cfg.model.input_norm} --teacher-weights {weights}")
    dist.barrier()


if __name__ == "__main__":
    main()
