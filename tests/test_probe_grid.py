"""The probe grid: its heads and their groups, each head folded into a plain classifier, and a real
run (DeepSpeed on CPU, the sample shards) that picks the head with the best validation score,
reports every head, scores best/ through timm as the grid scored it, and trains each head as the
single linear probe with that lr would be trained."""
import csv
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from subprocesses import child_env
from test_finetune_run import FINETUNE, ok, run

import uniemox.models.timm_models  # noqa: F401  (registers the architectures with timm)
from uniemox.errors import UserError
from uniemox.finetune.heads import LinearProbe, ProbeGrid
from uniemox.finetune.probe_grid import GridBest, grid_groups, grid_heads, scale_to
from uniemox.models import create_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME, TINY = "uniemox_vit_tiny_patch16", {"img_size": 32, "depth": 2}
RUN = ["model.arch={img_size: 32, depth: 2}", "data.batch_size=16", "data.eval_batch_size=128", "data.num_workers=1",
       "log.every=1", "log.progress=false", "optim.max_steps=16", "optim.warmup_steps=2", "eval.every=8",
       "--deepspeed", "zero0"]


def test_heads_are_every_pair_in_table_order_and_bad_grids_are_refused():
    heads = grid_heads([0.1, 2.0], [0.0, 0.05], global_batch=512)
    assert [(h.index, h.blr, h.weight_decay, h.lr) for h in heads] == [
        (0, 0.1, 0.0, 0.2), (1, 2.0, 0.0, 4.0), (2, 0.1, 0.05, 0.2), (3, 2.0, 0.05, 4.0)]
    for blrs, wds in (([], [0.0]), ([0.1], []), ([0.0], [0.0]), ([0.1], [-1.0]), ([0.1, 0.1], [0.0])):
        with pytest.raises(UserError, match="probe"):
            grid_heads(blrs, wds, 32)


def test_each_head_has_its_own_groups_and_lr_scale():
    grid = ProbeGrid(create_encoder(NAME, **TINY), 5, 4)
    heads = grid_heads([0.1, 2.0], [0.0, 0.05], global_batch=256)
    groups = scale_to(grid_groups(grid.heads, heads), base_lr=0.5)
    assert len(groups) == 8  # per head: the weight (decayed, LARS-adapted) and the bias (neither)
    for head in heads:
        weight, bias = groups[2 * head.index: 2 * head.index + 2]
        assert weight["params"] == [grid.heads[head.index][1].weight] and weight["always_adapt"]
        assert bias["params"] == [grid.heads[head.index][1].bias] and not bias["always_adapt"]
        assert weight["weight_decay"] == head.weight_decay and bias["weight_decay"] == 0.0
        assert weight["lr_scale"] == bias["lr_scale"] == pytest.approx(head.blr / 0.5)
    with pytest.raises(UserError, match="must be > 0"):
        scale_to(grid_groups(grid.heads, heads), 0.0)


def test_heads_start_as_the_single_probe_and_each_folds_into_a_plain_classifier():
    encoder = create_encoder(NAME, global_pool="token", **TINY).eval()  # the probe's CLS features
    torch.manual_seed(1)
    single = LinearProbe(encoder, 5)
    torch.manual_seed(1)
    grid = ProbeGrid(encoder, 5, 3)
    for head in grid.heads:
        assert torch.equal(head[1].weight, single.head[1].weight)
    x = torch.randn(6, 3, 32, 32)
    grid.train()
    for i, head in enumerate(grid.heads):  # heads that have learnt differently
        torch.nn.init.normal_(head[1].weight, std=0.5 + i)
    grid(torch.randn(16, 3, 32, 32))  # BatchNorm statistics
    grid.eval()
    logits = grid(x)
    assert logits.shape == (6, 3, 5)
    for i in range(3):
        plain = create_encoder(NAME, num_classes=5, global_pool="token", **TINY).eval()
        plain.load_state_dict(grid.folded_state(index=i))
        torch.testing.assert_close(plain(x), logits[:, i], rtol=1e-4, atol=1e-5)


def test_each_head_keeps_its_best_validation_weights():
    best = GridBest(3)
    state = {f"heads.{i}.1.weight": torch.full((2, 2), float(i)) for i in range(3)}
    best.update([0.5, 0.7, 0.7], step=4, state=state)
    best.update([0.6, 0.7, 0.9], step=8, state={k: v + 10 for k, v in state.items()})
    assert [r["step"] for r in best.records] == [8, 4, 8]  # a tie keeps the earlier weights
    assert [best.grid_state()[f"heads.{i}.1.weight"][0, 0] for i in range(3)] == [10.0, 1.0, 12.0]


def _run(args, run_dir, env=None):
    return run(FINETUNE, args + RUN + ["--run-dir", str(run_dir)], env=env, timeout=600)


def _metrics(run_dir):
    """{step: every scalar logged at that step}."""
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return {step: {k: v for r in rows if r["step"] == step for k, v in r.items()} for step in {r["step"] for r in rows}}


def test_grid_run_chooses_on_validation_reports_every_head_and_trains_each_as_alone(tmp_path):
    grid_dir, single_dir, killed_dir = tmp_path / "grid", tmp_path / "single", tmp_path / "killed"
    grid = ["--probe-grid", "probe.blrs=[0.02, 2.0, 200.0]", "probe.weight_decays=[0.0, 0.5]"]
    proc = ok(_run(grid, grid_dir))
    report = json.loads((grid_dir / "eval" / "probe_grid.json").read_text())
    heads = report["heads"]
    assert [(h["blr"], h["weight_decay"]) for h in heads] == [(b, w) for w in (0.0, 0.5) for b in (0.02, 2.0, 200.0)]
    assert all(h["val_top1"] is not None and h["test_top1"] is not None and h["best_step"] in (8, 16) for h in heads)
    vals = [h["val_top1"] for h in heads]
    assert len(set(vals)) > 1, "the heads must differ for the choice to mean something"
    chosen = report["chosen"]
    assert vals[chosen] == max(vals)  # on validation (of equals, the one that got there first)
    assert [h["chosen"] for h in heads] == [i == chosen for i in range(len(heads))]
    with open(grid_dir / "eval" / "probe_grid.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    assert (grid_dir / "eval" / "probe_grid.png").stat().st_size > 10_000
    assert "**chosen**" in proc.stdout

    # best/ is the chosen head at its best step: loaded through timm, it scores test as the grid did
    best = json.loads((grid_dir / "best" / "config.json").read_text())["uniemox"]
    assert best["probe_head"]["index"] == chosen and best["step"] == heads[chosen]["best_step"]
    assert best["recipe"] == "probe_grid" and best["val"]["top1"] == vals[chosen]
    test = json.loads((grid_dir / "eval" / "test.json").read_text())
    assert test["top1"] == heads[chosen]["test_top1"]
    model = timm.create_model(f"local-dir:{grid_dir / 'best'}", pretrained=True)
    assert model.num_classes == 8 and model.global_pool == "token"

    # the head (blr 2, wd 0) is trained as the single probe with blr 2: same losses, same val scores
    ok(_run(["--linear-probe", "optim.blr=2.0"], single_dir))
    g, s = _metrics(grid_dir), _metrics(single_dir)
    for step in range(1, 17):
        assert g[step]["probe_loss/blr2_wd0"] == pytest.approx(s[step]["loss/train"], rel=1e-5), step
    for step in (8, 16):
        assert g[step]["probe_grid/val_blr2_wd0"] == s[step]["val/top1"], step

    # killed after step 12, resumed from step 8: every head's record comes back, the same report
    assert _run(grid, killed_dir, env={"UNIEMOX_FAULT": "kill@step:12"}).returncode == -9
    ok(_run(grid + ["--resume", "auto"], killed_dir))
    assert json.loads((killed_dir / "eval" / "probe_grid.json").read_text()) == report


def test_a_grid_that_cannot_work_is_one_line(tmp_path):
    for bad, needle in ((["probe.blrs=[]"], "at least one value"), (["optim.grad_clip=1.0"], "grad_clip"),
                        (["train.ema=true"], "train.ema")):
        proc = subprocess.run([sys.executable, FINETUNE, "--probe-grid", "--run-dir", str(tmp_path / "r")] + RUN + bad,
                              cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env())
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error:"), proc.stderr[-2000:]
        assert needle in proc.stderr
