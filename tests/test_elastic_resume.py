"""Resuming on another world size, for real: DeepSpeed ranks killed with SIGKILL, the run continued
on fewer or more ranks through DeepSpeed's universal checkpoint; each sample once per epoch (the
runs' own sample logs), the optimizer's state carried over, the loss going on where it was."""
import glob
import json
import os
from collections import Counter

import pytest
import torch
from test_pretrain_run import metrics, ok, run
from subprocesses import deepspeed_launcher

from uniemox.data.sample import ensure_sample_shards

STEPS = 10  # x global batch 8 = 80 samples: the 48-sample epoch and most of the next


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return ensure_sample_shards(str(tmp_path_factory.mktemp("cache")), images_per_class_per_split=6, shard_size=4)


def args(shards, *extra):
    return [f"data.shards={shards}", f"optim.max_steps={STEPS}", "checkpoint.every=2", "log.image_every=0",
            "log.sample_keys=true", "optim.warmup_steps=2", "optim.lr=5e-4", "teacher.pretrained=uniemox-sample",
            "teacher.model=uniemox-clip-tiny-64"] + list(extra)


def seen_samples(run_dir):
    """(key, epoch) -> how often every rank's logged micro-batches held it."""
    seen = Counter()
    for path in glob.glob(str(run_dir / "samples" / "rank*.jsonl")):
        for line in open(path):
            row = json.loads(line)
            seen.update(zip(row["keys"], row["epochs"]))
    return seen


def adam_steps(tag_dir):
    """The optimizer's own step count in a checkpoint (ZeRO partitions or ZeRO-0's model states)."""
    files = glob.glob(str(tag_dir / "*optim_states.pt"))
    state = torch.load(files[0], weights_only=False)["optimizer_state_dict"]["base_optimizer_state"]["state"] \
        if files else torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)["optimizer"]["state"]
    return {float(s["step"]) for s in state.values()}


def comparable_loss(row):
    """The loss terms that do not depend on the micro batch (the local contrastive term's
    negatives are the rank's micro batch, which a resume on another world size may change)."""
    return row["loss/reconstruction"] + row["loss/similarity"]


def check_continued(run_dir, killed, stderr):
    assert "DeepSpeed universal checkpoint" in stderr
    seen = seen_samples(run_dir)
    assert set(seen.values()) == {1}, [k for k, n in seen.items() if n > 1]  # nothing twice in an epoch
    assert len({key for key, epoch in seen if epoch == 0}) == 48  # the first epoch whole
    assert sum(seen.values()) == STEPS * 8
    rows = metrics(run_dir)
    assert sorted(rows) == list(range(1, STEPS + 1))
    # the schedule goes on (the global batch kept: the same learning rate at every step)
    assert rows[5]["optim/lr"] == killed[5]["optim/lr"]
    # from the killed run's step-4 weights, on other batches: at its level, far below the start
    start, before, after = comparable_loss(rows[1]), comparable_loss(killed[5]), comparable_loss(rows[5])
    assert before < 0.85 * start and abs(after - before) < 0.5 * (start - before)
    ckpts = run_dir / "checkpoints"
    assert adam_steps(ckpts / f"step_{STEPS:08d}") == {float(STEPS)}  # a fresh optimizer would count 6
    assert not (ckpts / "universal").exists()  # removed once the run had gone on


@pytest.mark.parametrize("before,after", [
    ((2, ["data.batch_size=4"]), (1, ["data.batch_size=4"])),                               # 2 -> 1 rank
    ((1, ["data.batch_size=8", "train.single_rank_stage0=false"]), (2, ["data.batch_size=4"])),  # 1 -> 2
])
def test_killed_run_continues_on_another_world_size(tmp_path, shards, before, after):
    (ranks_a, extra_a), (ranks_b, extra_b) = before, after
    launch = {1: None, 2: deepspeed_launcher(2)}
    killed = run(args(shards, *extra_a), tmp_path, launcher=launch[ranks_a], env={"UNIEMOX_FAULT": "kill@step:5"})
    assert killed.returncode != 0 and os.path.isfile(tmp_path / "checkpoints" / "step_00000004" / "COMPLETE"), \
        killed.stderr[-3000:]
    killed_rows = metrics(tmp_path)
    resumed = run(args(shards, *extra_b, "--resume", "auto"), tmp_path, launcher=launch[ranks_b])
    ok(resumed)
    check_continued(tmp_path, killed_rows, resumed.stderr)


def test_one_rank_zero0_run_continues_on_two_ranks_whole(tmp_path, shards):
    """A one-rank run (ZeRO-2 JSON run as ZeRO-0) holds the optimizer whole: two ranks load it as
    it is and stay at ZeRO-0; a global batch the new ranks cannot keep is refused first."""
    ok(run(args(shards, "data.batch_size=4", "optim.max_steps=2"), tmp_path))
    refused = run(args(shards, "data.batch_size=4", "optim.max_steps=4", "--resume", "auto"), tmp_path,
                  launcher=deepspeed_launcher(2))
    assert refused.returncode != 0 and "the global batch must stay; data.batch_size could be 2, 1" in refused.stderr
    resumed = run(args(shards, "data.batch_size=2", "optim.max_steps=4", "--resume", "auto"), tmp_path,
                  launcher=deepspeed_launcher(2))
    ok(resumed)
    assert "ZeRO-0, loaded whole" in resumed.stderr and "ZeRO-0 as the checkpoint ran" in resumed.stderr
    assert adam_steps(tmp_path / "checkpoints" / "step_00000004") == {4.0}
    assert set(seen_samples(tmp_path).values()) == {1}
