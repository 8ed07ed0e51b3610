"""The pretraining entry point for real: DeepSpeed ranks (gloo on CPU), real sample shards,
a real open_clip teacher (tiny, random), checkpoints on disk, processes killed with SIGKILL."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from subprocesses import child_env, deepspeed_launcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(REPO, "launch", "pretrain.py")
TINY = ["model.arch={img_size: 32, depth: 2, decoder_depth: 1}", "data.batch_size=8", "data.num_workers=1",
        "log.every=1", "log.progress=false", "log.image_every=2", "checkpoint.every=4"]


def run(args, run_dir, stage=2, env=None, launcher=None, timeout=600):
    cmd = (launcher or [sys.executable]) + [PRETRAIN, "--deepspeed", os.path.join(REPO, "configs", f"zero{stage}.json"),
                                            "--run-dir", str(run_dir)] + TINY + list(args)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=child_env(env))
    return proc


def metrics(run_dir):
    """The last row logged for each step (a resumed run logs the replayed steps again)."""
    rows = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            rows[row["step"]] = row
    return rows


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_ranks_zero2(tmp_path):
    proc = run(["optim.max_steps=4"], tmp_path, launcher=deepspeed_launcher(2))
    ok(proc)
    tag = tmp_path / "checkpoints" / "step_00000004"
    assert (tag / "COMPLETE").is_file()
    assert {p.name for p in tag.glob("trainer_rank*.pt")} == {"trainer_rank0.pt", "trainer_rank1.pt"}
    assert len(list(tag.glob("*optim_states.pt"))) == 2  # ZeRO-2: one optimizer partition per rank
    assert json.loads((tag / "COMPLETE").read_text())["world_size"] == 2
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "reconstructions" / "step_00000002.png").is_file()
    rows = metrics(tmp_path)
    assert sorted(rows) == [1, 2, 3, 4]
    assert all(math.isfinite(r[f"loss/{k}"]) for r in rows.values()
               for k in ("loss", "reconstruction", "similarity", "contrastive"))
    assert "TensorBoard" in proc.stdout and "checkpoint" in proc.stdout


@pytest.mark.parametrize("stage", [0, 1, 3])
def test_other_zero_stages_start_and_step(tmp_path, stage):
    ok(run(["optim.max_steps=2", "checkpoint.every=100"], tmp_path, stage=stage))
    rows = metrics(tmp_path)
    assert sorted(rows) == [1, 2] and all(math.isfinite(r["loss/loss"]) for r in rows.values())
    assert (tmp_path / "checkpoints" / "step_00000002" / "COMPLETE").is_file()
    # the fp32 export works from every stage's checkpoint (ZeRO-3: from its shards)
    out = subprocess.run([sys.executable, PRETRAIN, "--export", str(tmp_path / "checkpoints" / "step_00000002"),
                          str(tmp_path / "export")], capture_output=True, text=True, timeout=300)
    ok(out)
    from safetensors.torch import load_file

    from uniemox.exports.release import load_encoder_checkpoint
    from uniemox.models import create_encoder
    enc = create_encoder("uniemox_vit_tiny_patch16", img_size=32, depth=2, global_pool="token")
    report = load_encoder_checkpoint(enc, str(tmp_path / "export" / "encoder.safetensors"))
    assert report.missing == [] and report.unexpected == []
    state = load_file(str(tmp_path / "export" / "pretrainer.safetensors"))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values())
    assert any(k.startswith("fusion.") for k in state)


def test_losses_fall_on_the_sample_set(tmp_path):
    ok(run(["optim.max_steps=40", "optim.warmup_steps=5", "data.batch_size=16", "log.image_every=0",
            "checkpoint.every=100"], tmp_path))
    rows = metrics(tmp_path)
    first = sum(rows[s]["loss/loss"] for s in range(1, 6)) / 5
    last = sum(rows[s]["loss/loss"] for s in range(36, 41)) / 5
    assert all(math.isfinite(r["loss/loss"]) for r in rows.values())
    assert last < 0.7 * first, (first, last)


def _same_steps(a, b, steps):
    for s in steps:
        assert a[s]["batch_crc32"] == b[s]["batch_crc32"], f"step {s}: other batches"
        for key in ("loss/loss", "loss/reconstruction", "loss/similarity", "loss/contrastive"):
            assert a[s][key] == pytest.approx(b[s][key], rel=1e-5, abs=1e-6), (s, key)


@pytest.mark.parametrize("fault", ["kill@step:6", "kill@save:8"])
def test_killed_run_resumes_to_the_same_batches_and_losses(tmp_path, fault):
    args = ["optim.max_steps=8", "log.image_every=0", "data.num_workers=2"]
    ok(run(args, tmp_path / "straight"))
    killed = run(args, tmp_path / "killed", env={"UNIEMOX_FAULT": fault})
    assert killed.returncode == -9
    ckpts = tmp_path / "killed" / "checkpoints"
    if fault.startswith("kill@save"):  # files written, marker not: never taken for complete
        assert (ckpts / "step_00000008").is_dir() and not (ckpts / "step_00000008" / "COMPLETE").exists()
    ok(run(args + ["--resume", "auto"], tmp_path / "killed"))
    assert (ckpts / "step_00000008" / "COMPLETE").is_file()
    _same_steps(metrics(tmp_path / "straight"), metrics(tmp_path / "killed"), range(1, 9))


def test_nan_steps_are_skipped_and_counted(tmp_path):
    ok(run(["optim.max_steps=6"], tmp_path, stage=0,  # fp32 ZeRO-0: the gradient check is ours, not the engine's
           env={"UNIEMOX_FAULT": "nan_loss@step:3,nan_grad@step:5"}))
    rows = metrics(tmp_path)
    assert [rows[s]["health/skipped_steps"] for s in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    from safetensors.torch import load_file
    subprocess.run([sys.executable, PRETRAIN, "--export", str(tmp_path / "checkpoints" / "step_00000006"),
                    str(tmp_path / "export")], check=True, capture_output=True, timeout=300)
    assert all(torch.isfinite(v).all() for v in load_file(str(tmp_path / "export" / "encoder.safetensors")).values())


def test_too_many_nan_steps_stop_the_run_with_a_good_checkpoint(tmp_path):
    proc = run(["optim.max_steps=10", "train.max_nonfinite=3"], tmp_path,
               env={"UNIEMOX_FAULT": "nan_loss@step:5,nan_loss@step:6,nan_loss@step:7"})
    assert proc.returncode == 3
    assert "3 consecutive steps with a non-finite loss (last at step 7)" in proc.stderr
    assert (tmp_path / "checkpoints" / "step_00000004" / "COMPLETE").is_file()
    assert not (tmp_path / "checkpoints" / "step_00000010").exists()


@pytest.mark.parametrize("args,message", [
    (["data.batchsize=8"], "unknown config key 'data.batchsize'"),
    (["optim.max_steps=many"], "config key 'optim.max_steps': expected int"),
    (["data.shards=/nonexistent/train-{000000..000003}.tar"], "shard not found: /nonexistent/train-000000.tar"),
    (["teacher.weights=/nonexistent/ViT-B-16.pt"], "/nonexistent/ViT-B-16.pt"),
    (["teacher.pretrained=null"], "teacher"),
])
def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path, args, message):
    proc = run(["optim.max_steps=1"] + args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert "Traceback" not in proc.stderr


def test_init_from_an_mae_checkpoint(tmp_path):
    from uniemox.models import create_pretrainer
    src = create_pretrainer("uniemox_vit_tiny_patch16", img_size=32, depth=2, decoder_depth=1, proj_dim=64)
    torch.save({"model": src.model.state_dict()}, tmp_path / "mae.pth")
    proc = run(["optim.max_steps=1", "checkpoint.every=100", "log.image_every=0", "--init", str(tmp_path / "mae.pth")],
               tmp_path / "run")
    ok(proc)
    assert f"init from {tmp_path / 'mae.pth'}: loaded" in proc.stderr
    # an MAE file has no fusion weights: reported, not silently left random
    assert "missing from the file (fusion." in proc.stderr
