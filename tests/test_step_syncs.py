"""The training step reads nothing back from the device between reports: every `.item()`,
`float()`, `int()`, `bool()` or `.tolist()` of a tensor made by the project's own code is counted
(a patched tensor method, as CUDA's sync debug mode would flag them), and the steps between two
reports make none. DeepSpeed's own reads (its overflow check under ZeRO-1/2) are DeepSpeed's."""
import os
import sys

import pytest
import torch

import uniemox
import uniemox.kernels

OURS = tuple(os.path.dirname(m.__file__) + os.sep for m in (uniemox, uniemox.kernels))
READS = ("item", "tolist", "__float__", "__int__", "__bool__")


@pytest.mark.parametrize("task,overrides", [
    ("pretrain", ["model.arch={img_size: 32, depth: 2, decoder_depth: 1}"]),
    ("teacher", ["data.emotion_only_prob=0.5", "eval.every=-1"]),
    ("classify", ["model.arch={img_size: 32, depth: 2}", "eval.every=100", "aug.reprob=0.5", "aug.mixup=0.8",
                  "train.ema=true"]),
    # AdamW: LARS has no found_inf, so fp32 ZeRO-0 checks its gradients on the host by design (guard.py)
    ("probe_grid", ["model.arch={img_size: 32, depth: 2}", "eval.every=100", "train.probe_grid=true",
                    "optim.name=adamw"]),
])
def test_no_read_back_between_reports(tmp_path, monkeypatch, task, overrides):
    from uniemox.config import deepspeed_config, resolve_config
    from uniemox.train.trainer import Trainer
    if task == "pretrain":
        from uniemox.config.pretrain import PretrainConfig as Config
        from uniemox.tasks.pretrain import PretrainTask as Task
    elif task == "teacher":
        from uniemox.config.clip_teacher import TeacherTrainConfig as Config
        from uniemox.tasks.clip_teacher import TeacherTask as Task
    elif task == "classify":
        from uniemox.config.classify import FinetuneConfig as Config
        from uniemox.tasks.classify import ClassifyTask as Task
    else:
        from uniemox.config.classify import FinetuneConfig as Config
        from uniemox.tasks.probe_grid import ProbeGridTask as Task
    common = ["data.batch_size=8", "data.num_workers=1", "optim.max_steps=6", "log.every=100", "log.progress=false",
              "checkpoint.every=0", f"log.run_dir={tmp_path}"]
    cfg = resolve_config(Config, overrides=common + overrides, recipes=Task.recipes)
    if hasattr(cfg.log, "image_every"):
        cfg.log.image_every = 0
    trainer = Trainer(cfg, Task, deepspeed_config("zero2"))
    reads, counting = [], [False]

    def counted(name, original):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if counting[0] and caller.startswith(OURS):
                reads.append(f"{name} at {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)
        return read
    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))

    watched = []

    def window(step):  # steps 2 to 5: no report, no checkpoint, no evaluation is due
        counting[0] = 1 <= step < 5
        watched.extend([step + 1] if counting[0] else [])
    trainer.step_end_callbacks.append(window)
    threads = torch.get_num_threads()
    try:
        trainer.fit()
    finally:
        torch.set_num_threads(threads)  # the trainer sized them for its run
    assert trainer.step == 6 and watched == [2, 3, 4, 5]
    assert reads == []


def test_the_counter_sees_a_read(monkeypatch):
    """The patched methods do catch a read from the project's code (the test above can fail)."""
    from uniemox.train.guard import NonFiniteGuard
    seen = []
    original = torch.Tensor.tolist

    def read(self, *args, **kwargs):
        if sys._getframe(1).f_code.co_filename.startswith(OURS):
            seen.append(True)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "tolist", read)
    NonFiniteGuard(3, torch.device("cpu")).check()  # a report's read
    assert seen == [True]
