"""CLIP teacher training: the symmetric InfoNCE loss, caption shortening, and the real entry point
(DeepSpeed, sample shards, checkpoints): the packaged teacher's recorded command re-runs from the
recorded first-step loss, a killed run resumes to the same losses, bad input is one line."""
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from uniemox.errors import UserError
from uniemox.data.prompts import TEMPLATE_SETS, shorten_captions
from uniemox.launch.train_teacher import config_of, parse_args
from uniemox.tasks.base import MicroContext
from uniemox.tasks.clip_teacher import export_teacher_weights
from uniemox.losses import clip_contrastive_loss
from uniemox.exports.teacher import load_teacher
from uniemox.exports.teacher import embedded_card

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "launch", "train_teacher.py")
FAST = ["log.progress=false", "export.path=null", "eval.every=-1"]  # no zero-shot pass: tests of the loop


DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra):
    """The test process may hold a process group (in-process tests call init_distributed, which
    exports RANK/MASTER_PORT...): a child must start its own, not join that one."""
    return dict({k: v for k, v in os.environ.items() if k not in DIST_VARS}, **extra)


def run(args, env=None, timeout=600):
    return subprocess.run([sys.executable, TRAIN] + list(args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=clean_env(**(env or {})))


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]


def metrics(run_dir):
    rows = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "loss/loss" in row:
                rows[row["step"]] = row
    return rows


# ---- the loss ---------------------------------------------------------------------------------
def test_loss_is_clip_cross_entropy_both_ways():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    scale = torch.tensor(20.0)
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    labels = torch.arange(6)
    ref = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(clip_contrastive_loss(img, txt, scale), ref)


def test_duplicate_captions_need_no_multi_positive_targets():
    """Identical strings -> identical text embeddings: one-hot targets give the value and the
    gradient of targets that spread over every copy of the caption (the docstring's claim)."""
    captions = [0, 1, 0, 2, 1, 0]  # caption ids; the "text encoder" is an embedding table
    g = torch.Generator().manual_seed(3)
    table = torch.randn(3, 8, generator=g, requires_grad=True)
    img = torch.randn(6, 8, generator=g, requires_grad=True)
    scale = torch.tensor(30.0)
    ids = torch.tensor(captions)

    def multi_positive(image, text):
        logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
        target = (ids[:, None] == ids[None, :]).float()
        target = target / target.sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))

    ours = clip_contrastive_loss(img, table[ids], scale)
    grads = torch.autograd.grad(ours, (img, table))
    ref = multi_positive(img, table[ids])
    ref_grads = torch.autograd.grad(ref, (img, table))
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_learned_scale_gets_gradient_and_is_capped_at_100():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    clip_contrastive_loss(img, txt, log_scale.exp()).backward()
    assert log_scale.grad is not None and log_scale.grad.abs() > 0
    big = torch.tensor(math.log(500.0), requires_grad=True)
    loss = clip_contrastive_loss(img, txt, big.exp())
    loss.backward()
    assert big.grad.item() == 0.0  # capped: no push beyond 100
    torch.testing.assert_close(loss, clip_contrastive_loss(img, txt, torch.tensor(100.0)))


def test_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="must both be"):
        clip_contrastive_loss(torch.randn(3, 8), torch.randn(4, 8), torch.tensor(1.0))


def test_shorten_captions_is_seeded_and_keeps_the_emotion_sentence():
    texts = [f"The scene type of this photo is park {i}. The overall emotion conveyed is awe." for i in range(64)]

    def gen(step):
        return MicroContext(step=step, micro=0, rank=0, seed=0).generator(17)
    assert shorten_captions(texts, 0.0, gen(0)) == texts
    assert set(shorten_captions(texts, 1.0, gen(0))) == {"The overall emotion conveyed is awe."}
    a = shorten_captions(texts, 0.3, gen(5))
    assert a == shorten_captions(texts, 0.3, gen(5))                # same (seed, step, micro, rank)
    assert a != shorten_captions(texts, 0.3, gen(6))                # another step draws again
    short = sum(t == "The overall emotion conveyed is awe." for t in a)
    assert 5 <= short <= 35, short


# ---- the entry point, for real ------------------------------------------------------------------
def test_recorded_command_restarts_from_the_recorded_first_loss(tmp_path):
    """Re-running the packaged teacher's exact command (cut to 2 steps) starts from the loss its
    card records: same code, seed, data and initialisation as the shipped run."""
    card = embedded_card("uniemox-sample")
    argv = shlex.split(card["command"])[2:]  # after "python launch/train_teacher.py"
    out = tmp_path / "rerun"
    ok(run(argv + ["optim.max_steps=2", "log.every=1", "--run-dir", str(out)] + FAST))
    rows = metrics(out)
    assert rows[1]["loss/loss"] == pytest.approx(card["first_step_loss"], rel=1e-4)
    assert all(math.isfinite(r["loss/loss"]) for r in rows.values())
    # the recorded config is what the current preset gives for that command (nothing drifted
    # but the run length, logging, evaluation and where things go)
    now = json.loads((out / "export" / "teacher.json").read_text())["config"]
    shipped = dict(card["config"])
    # the fault-injection fields left the config for the opt-in hooks module; the shipped run held them empty
    assert [shipped["train"].pop(k) for k in ("inject_nan_steps", "inject_nan_grad_steps")] == [[], []]
    now["train"].pop("single_rank_stage0")  # settings added since: a one-rank run's engine stage,
    assert (now["train"].pop("compile"), now["train"].pop("compile_mode")) == (False, "default")  # torch.compile,
    now["data"].pop("io_retries"), now["data"].pop("io_timeout")  # remote shards' waits,
    now.pop("loss")  # how ranks share negatives (one rank: none to share)
    now["eval"].pop("templates")  # and zero-shot prompts (evaluation only)
    for cfg in (now, shipped):
        cfg["optim"].pop("max_steps"), cfg.pop("log"), cfg.pop("export"), cfg["eval"].pop("every")
        # epochs do not act where max_steps and warmup_steps are set (the recipe sets both)
        cfg["optim"].pop("epochs"), cfg["optim"].pop("warmup_epochs")
    assert now == shipped
    # the export of a checkpoint loads as a teacher with the weights of the run's own export
    card2 = export_teacher_weights(str(out / "checkpoints" / "step_00000002"), str(tmp_path / "again.safetensors"),
                                   "fp32")
    assert card2["dtype"] == "fp32" and card2["steps"] == 2 and card2["first_step_loss"] == rows[1]["loss/loss"]
    a = load_teacher("uniemox-clip-tiny-64", weights=str(out / "export" / "teacher.safetensors"))
    b = load_teacher("uniemox-clip-tiny-64", weights=str(tmp_path / "again.safetensors"))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, atol=1e-3, rtol=1e-3, msg=k)  # fp16 vs fp32 export


def test_resumed_run_continues_with_the_same_losses(tmp_path):
    """Resuming from a step-2 checkpoint gives steps 3-4 of the uninterrupted run: data position,
    shortened captions (seeded per step) and optimizer state all carry over."""
    args = ["optim.max_steps=4", "log.every=1", "checkpoint.every=2", "checkpoint.keep=2",
            "data.emotion_only_prob=0.5"] + FAST
    ok(run(args + ["--run-dir", str(tmp_path / "straight")]))
    ok(run(args + ["--run-dir", str(tmp_path / "resumed"), "--resume",
                   str(tmp_path / "straight" / "checkpoints" / "step_00000002")]))
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert sorted(b) == [3, 4]
    for step in (3, 4):
        for key in ("loss/loss", "train/batch_accuracy", "train/logit_scale"):
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-5, abs=1e-6), (step, key)


def test_two_ranks_zero3_train_evaluate_and_export(tmp_path):
    """ZeRO-3 partitions every parameter: training (with both ranks' captions as negatives), the
    zero-shot evaluation (every rank runs it; here with the prompt ensemble) and the export
    (gathered from the shards) must still work across ranks."""
    with socket.socket() as sock:  # not the launcher's default port: other runs may hold it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), TRAIN, "--deepspeed",
           os.path.join(REPO, "configs", "zero3.json"), "--run-dir", str(tmp_path)]
    proc = subprocess.run(cmd + FAST + ["optim.max_steps=2", "log.every=1", "eval.every=1", "eval.templates=emotion"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=clean_env())
    ok(proc)
    rows = metrics(tmp_path)
    assert sorted(rows) == [1, 2] and all(math.isfinite(r["loss/loss"]) for r in rows.values())
    # global negatives (open_clip's ClipLoss, local loss): each rank's 32 images against both ranks' captions
    assert all((r["train/logits_rows"], r["train/logits_cols"]) == (32, 64) for r in rows.values())
    with open(tmp_path / "metrics.jsonl") as f:
        evals = [json.loads(line) for line in f if "eval/zero_shot_accuracy" in line]
    assert [e["step"] for e in evals] == [1, 2] and all(e["eval/images"] == 256 for e in evals)
    t = load_teacher("uniemox-clip-tiny-64", weights=str(tmp_path / "export" / "teacher.safetensors"))
    zero_shot = json.loads((tmp_path / "export" / "teacher.json").read_text())["zero_shot"]
    assert zero_shot["accuracy"] == evals[-1]["eval/zero_shot_accuracy"]
    assert zero_shot["templates"] == list(TEMPLATE_SETS["emotion"])  # the prompt ensemble it was scored with
    assert torch.isfinite(t.encode_text(["The overall emotion conveyed is awe."])).all()


def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path):
    proc = run(["optim.max_steps=1", "--run-dir", str(tmp_path), "data.shards=/nonexistent/train-{000000..000001}.tar"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "shard not found: /nonexistent/train-000000.tar" in last, last
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("override,message", [
    ("data.emotion_only_prob=1.5", "config key 'data.emotion_only_prob': must be in [0.0, 1.0], got 1.5"),
    ("export.dtype=int8", "config key 'export.dtype': must be one of fp16, fp32, got 'int8'"),
    ("model.nme=x", "unknown config key 'model.nme'"),
])
def test_bad_config_is_refused_before_anything_starts(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        config_of(parse_args([override]))


def loss_of(world, *overrides):
    from uniemox.tasks.clip_teacher import TeacherTask
    from uniemox.train.run import Run

    run = Run(rank=1, world=world, device=torch.device("cpu"), run_dir="unused", precision="fp32", dtype=torch.float32)
    return TeacherTask(config_of(parse_args(list(overrides))), run)._loss()


def test_loss_settings_map_to_open_clips_options():
    loss = loss_of(2)
    assert (loss.world_size, loss.rank, loss.local_loss, loss.gather_with_grad) == (2, 1, True, True)
    loss = loss_of(2, "loss.global_negatives=false")
    assert (loss.world_size, loss.rank) == (1, 0)  # each rank's own batch
    loss = loss_of(2, "loss.local_loss=false", "loss.gather_with_grad=false")  # open_clip's own defaults
    assert (loss.world_size, loss.local_loss, loss.gather_with_grad) == (2, False, False)
    assert loss_of(1).world_size == 1
    with pytest.raises(UserError, match="loss.local_loss needs loss.gather_with_grad=true"):
        loss_of(2, "loss.gather_with_grad=false")


def test_user_data_gets_no_sample_preset():
    cfg = config_of(parse_args(["data.shards=/d/train-{000000..000003}.tar"]))
    assert cfg.data.emotion_only_prob == 0.0 and cfg.optim.max_steps == 0
    cfg = config_of(parse_args([]))
    assert cfg.data.shards is None and cfg.data.emotion_only_prob > 0 and cfg.optim.max_steps > 0
