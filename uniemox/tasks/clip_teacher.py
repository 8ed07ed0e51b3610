"""Teacher training: contrastive image-text training (CLIP's symmetric InfoNCE, learned temperature)
of an open_clip model on captioned shards (docs/method.md#pretraining captions), the scene view as the image. The
result is a CLIP weights file (safetensors + a JSON card) for the pretraining teacher."""
import logging
import os
from typing import Dict, List, Optional

import torch

from uniemox.config import recipe, to_dict
from uniemox.data import (build_labeled_loader, build_pretrain_loader, ensure_sample_shards, epoch_size,
                          expand_urls, load_manifest, shard_urls)
from uniemox.data.prompts import load_templates, shorten_captions
from uniemox.data.tarstream import data_retry
from uniemox.data.transforms import model_input
from uniemox.errors import UserError
from uniemox.train.checkpoint import read_marker

from .base import Task

CAPTION_SALT = 17  # caption draws use their own stream beside any other draw of the micro-batch


class TeacherTask(Task):
    name = "teacher"
    resume_must_match = ("task", "zero_stage", "model.name", "model.input_norm")
    report_first_step = True  # the card records the first step's loss (reproducibility check)

    @staticmethod
    def recipes(user: Dict) -> List[Dict]:
        """With no data named, the packaged teacher's own run (configs/teacher_sample.yaml)."""
        return [] if (user.get("data") or {}).get("shards") else [recipe("teacher_sample")]

    def __init__(self, cfg, run, command: str = ""):
        super().__init__(cfg, run)
        self.command = command          # recorded in the weights' card
        self.first_loss = self.last_loss = None
        self.final: Dict[str, float] = {}

    def describe(self) -> str:
        where = f"{len(self.eval_urls)} shard(s), {len(self.classes)} classes" if self.eval_urls else "none"
        ranks = self.model.loss.world_size
        negatives = f"captions of {ranks} ranks" if ranks > 1 else "the rank's own batch"
        return f"{self.cfg.model.name} from {self.source} | contrasted with {negatives} | zero-shot eval: {where}"

    # -- built once ---------------------------------------------------------------------------------
    def build_model(self):
        import open_clip
        from uniemox.models.contrastive_clip import ContrastiveCLIP
        from uniemox.exports.teacher import build_clip

        cfg = self.cfg
        clip, self.source = build_clip(cfg.model.name, pretrained=cfg.model.pretrained, weights=cfg.model.weights)
        clip.requires_grad_(True)
        self.model = ContrastiveCLIP(clip, open_clip.get_tokenizer(cfg.model.name), cfg.model.input_norm,
                                     self._loss())
        return self.model

    def _loss(self):
        """open_clip's ClipLoss over every rank's captions (loss.global_negatives), or this rank's."""
        from uniemox.losses.clip_contrastive import CappedClipLoss

        c = self.cfg.loss
        if c.global_negatives and c.local_loss and not c.gather_with_grad:
            raise UserError("loss.local_loss needs loss.gather_with_grad=true: without the gradient through the "
                            "gather, the other ranks' terms of each embedding are lost (open_clip issues/616)")
        world = self.run.world if c.global_negatives else 1
        return CappedClipLoss(self.run.rank if world > 1 else 0, world, c.local_loss, c.gather_with_grad)

    def build_data(self):
        cfg, run = self.cfg, self.run
        self.image_size = self._image_size()
        sample_root = None if cfg.data.shards else ensure_sample_shards(rank=run.rank)
        self.shards = cfg.data.shards or sample_root
        self.eval_urls, self.classes = self._eval_set(sample_root)
        self.templates = load_templates(cfg.eval.templates)  # a bad file stops the run before it starts
        return build_pretrain_loader(self.shards, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                                     image_size=self.image_size, shuffle_buffer=cfg.data.shuffle_buffer,
                                     seed=cfg.data.seed, resampled=cfg.data.resampled, rank=run.rank,
                                     world_size=run.world, pin_memory=run.pinned, person_view=False,  # the scene view
                                     retry=data_retry(cfg.data))

    def _image_size(self) -> int:
        import open_clip
        from uniemox.models.clip_models import register_model_configs

        register_model_configs()
        model_cfg = open_clip.get_model_config(self.cfg.model.name)
        if model_cfg is None:
            raise UserError(f"unknown open_clip model {self.cfg.model.name!r}")
        size = model_cfg["vision_cfg"]["image_size"]
        return size[0] if isinstance(size, (list, tuple)) else int(size)

    def _eval_set(self, sample_root: Optional[str]):
        """(shard urls, class names) for zero-shot evaluation, or (None, None) when there is none."""
        cfg = self.cfg
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

    def epoch_samples(self):
        return epoch_size(self.shards)

    # -- every step ---------------------------------------------------------------------------------
    def training_forward(self, engine, batch, ctx):
        texts = shorten_captions(batch["text"], self.cfg.data.emotion_only_prob, ctx.generator(CAPTION_SALT))
        out = engine(model_input(batch["scene"], self.run.device, self.run.dtype), texts)
        return out["loss"], {"loss/loss": out["loss"], "train/batch_accuracy": out["batch_accuracy"],
                             "train/logit_scale": out["logit_scale"],  # the logits' shape: [own images, captions]
                             "train/logits_rows": out["logits_rows"], "train/logits_cols": out["logits_cols"]}

    def on_report(self, step, values):
        if step == 1:
            self.first_loss = values.get("loss/loss")
        self.last_loss = values.get("loss/loss", self.last_loss)

    def progress_fields(self, values):
        return {"acc": f"{values.get('train/batch_accuracy', float('nan')):.2f}"}

    # -- zero-shot evaluation -----------------------------------------------------------------------
    def eval_every(self, plan):
        return self.cfg.eval.every if self.eval_urls else None

    def evaluate(self, engine, step):
        """Zero-shot accuracy against each class's prompts (eval.templates; by default "The overall
        emotion conveyed is {class}."), through open_clip's zero-shot classifier. Every rank runs
        the whole eval set (ZeRO-3 needs every rank in every forward); rank 0 reports."""
        from uniemox.models.zero_shot import class_embeddings, zero_shot_accuracy

        device, dtype = self.run.device, self.run.dtype
        loader = build_labeled_loader(self.eval_urls, self.cfg.eval.batch_size,
                                      num_workers=min(2, len(self.eval_urls)), image_size=self.image_size)
        engine.eval()
        try:
            with torch.no_grad():
                classes = class_embeddings(lambda tokens: engine(None, tokens, encode_only=True)[1],
                                           self.model.tokenizer, self.classes, self.templates, device)
                acc, n = zero_shot_accuracy(lambda x: engine(model_input(x, device, dtype), encode_only=True)[0],
                                            classes, loader)
        finally:
            engine.train()
        self.final = {"eval/zero_shot_accuracy": acc, "eval/images": float(n)}
        self.log(logging.INFO, "step %d: zero-shot accuracy %.4f on %d images", step, acc, n)
        return self.final

    # -- checkpoints and the end --------------------------------------------------------------------
    def state_dict(self):
        return {"first_loss": self.first_loss}

    def load_state_dict(self, state):
        self.first_loss = state.get("first_loss")

    def card(self, step: int) -> Dict:
        """What the weights' card records: how they were made and how well they score."""
        import open_clip

        cfg, final = self.cfg, self.final
        zero_shot = None
        if final:
            zero_shot = {"accuracy": final["eval/zero_shot_accuracy"], "images": int(final["eval/images"]),
                         "templates": list(self.templates), "classes": self.classes,
                         "shards": cfg.eval.shards or "sample set, val split"}
        return {"model": cfg.model.name, "init": self.source, "input_norm": cfg.model.input_norm,
                "command": self.command, "seed": cfg.train.seed, "steps": step, "first_step_loss": self.first_loss,
                "last_report_loss": self.last_loss, "zero_shot": zero_shot,
                "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__}, "config": to_dict(cfg)}

    def checkpoint_meta(self, step):
        return {"model": self.cfg.model.name, "card": self.card(step)}

    def finish(self, engine, step, last_checkpoint, skipped_steps):
        cfg, run = self.cfg, self.run
        if run.rank == 0:
            card = self.card(step)
            weights = os.path.join(run.run_dir, "export", "teacher.safetensors")
            written = export_teacher_weights(last_checkpoint, weights, cfg.export.dtype, card)
            if cfg.export.path:
                export_teacher_weights(last_checkpoint, cfg.export.path, cfg.export.dtype, card)
            print(f"done: {step} steps, {skipped_steps} skipped, zero-shot accuracy "
                  f"{self.final.get('eval/zero_shot_accuracy', float('nan')):.4f}.\n"
                  f"  TensorBoard: tensorboard --logdir {os.path.join(run.run_dir, 'tb')}\n"
                  f"  weights:     {weights} ({written['bytes'] / 2**20:.1f} MiB, {cfg.export.dtype})\n"
                  f"  use:         uniemox-pretrain ... teacher.model={cfg.model.name} "
                  f"teacher.input_norm={cfg.model.input_norm} --teacher-weights {weights}")
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank leaves before the weights are written


def export_teacher_weights(tag_path: str, out_file: str, dtype: str = "fp16", card: Optional[Dict] = None) -> Dict:
    """The CLIP state dict of a teacher-training checkpoint (any ZeRO stage) as the teacher's export
    (uniemox.exports.teacher); returns the card. Loadable with load_teacher(weights=out_file)."""
    from uniemox.exports.teacher import write_teacher_weights
    from uniemox.train.export import fp32_state_from_checkpoint

    state = fp32_state_from_checkpoint(tag_path)
    clip = {k[len("clip."):]: v for k, v in state.items() if k.startswith("clip.")}
    if not clip:
        raise UserError(f"{tag_path} holds no CLIP weights (not a train_teacher checkpoint?)")
    if card is None:  # the card the run left in the checkpoint's marker
        card = read_marker(tag_path).get("card", {})
    return write_teacher_weights(clip, out_file, dtype, card)
