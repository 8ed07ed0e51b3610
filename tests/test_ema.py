"""Model EMA in fine-tuning, for real (DeepSpeed on CPU, the sample shards): the EMA differs from
the trained weights, both are validated, the better is kept as best/ (which says which), and best/
loaded back through timm scores validation exactly as it scored during training. Exact resume of
the EMA (one rank and two): tests/test_finetune_run.py."""
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from subprocesses import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["model.arch={img_size: 32, depth: 2}", "data.batch_size=8", "data.eval_batch_size=64", "data.num_workers=1",
        "log.every=1", "log.progress=false"]


def _val(run_dir, tag, step):
    return json.loads((run_dir / "eval" / f"{tag}_step_{step:08d}.json").read_text())


def test_ema_differs_from_the_weights_both_are_validated_and_the_better_is_best(tmp_path):
    from uniemox.config import deepspeed_config, resolve_config
    from uniemox.config.classify import FinetuneConfig
    from uniemox.data import ensure_sample_shards
    from uniemox.eval.evaluate import evaluate_split
    from uniemox.eval.scorers import classifier_scorer
    from uniemox.tasks.classify import ClassifyTask
    from uniemox.train.trainer import Trainer

    cfg = resolve_config(FinetuneConfig, overrides=TINY + [
        "train.ema=true", "train.ema_decay=0.9", "optim.max_steps=6", "eval.every=3", f"log.run_dir={tmp_path}"],
        recipes=ClassifyTask.recipes)
    trainer = Trainer(cfg, ClassifyTask, deepspeed_config("zero2"))
    threads = torch.get_num_threads()
    try:
        trainer.fit()
    finally:
        torch.set_num_threads(threads)  # the trainer sized them for its run
    raw, ema = trainer.engine.module.state_dict(), trainer.task.ema.module.state_dict()
    assert raw.keys() == ema.keys() and all(v.dtype == torch.float32 for v in ema.values())
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], ema[k])]
    assert len(moved) > 0.9 * len(raw), "the EMA must be an average, not the weights"

    scores = {(step, w): _val(tmp_path, "val" if w == "raw" else "val_ema", step)["top1"]
              for step in (3, 6) for w in ("raw", "ema")}
    best = json.loads((tmp_path / "best" / "config.json").read_text())["uniemox"]
    top = max(scores.values())
    first = min((s, w != "raw") for (s, w), v in scores.items() if v == top)  # earliest; raw before ema on ties
    assert (best["step"], best["weights"]) == (first[0], "ema" if first[1] else "raw")
    assert best["val"]["top1"] == top and (best["weights"] != "ema" or best["ema_decay"] == 0.9)

    # best/ through timm (predict's path) scores validation as the run scored these weights
    tag = "val" if best["weights"] == "raw" else "val_ema"
    during = _val(tmp_path, tag, best["step"])
    with torch.no_grad():  # as launch/predict.py scores
        again = evaluate_split(classifier_scorer(str(tmp_path / "best"), torch.device("cpu"), False),
                               ensure_sample_shards(), "val", 64)
    assert again["top1"] == during["top1"] and again["confusion_matrix"] == during["confusion_matrix"]
    if best["step"] == 6 and best["weights"] == "ema":  # best/ holds the EMA itself
        saved = load_file(str(tmp_path / "best" / "model.safetensors"))
        assert all(torch.equal(saved[k], ema[k]) for k in ema)
    card = (tmp_path / "best" / "README.md").read_text()
    assert f"Weights: {best['weights']} at step {best['step']}" in card and "| test |" in card


def test_ema_under_zero3_is_refused_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "finetune.py"), "train.ema=true",
                           "optim.max_steps=1", "--deepspeed", "zero3", "--run-dir", str(tmp_path)] + TINY,
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: train.ema: ZeRO-3")


def test_a_probe_ema_shares_the_frozen_encoder():
    from timm.utils import ModelEmaV3

    from uniemox.finetune.heads import LinearProbe
    from uniemox.models import create_encoder

    probe = LinearProbe(create_encoder("uniemox_vit_tiny_patch16", global_pool="token", img_size=32, depth=2), 4)
    ema = ModelEmaV3(probe, decay=0.5)
    assert ema.module.encoder is probe.encoder and ema.module.head is not probe.head
    with torch.no_grad():
        probe.head[1].weight.add_(1.0)
    ema.update(probe)
    torch.testing.assert_close(ema.module.head[1].weight, probe.head[1].weight - 0.5)


def _rank_main(rank, port, out):
    import types

    import torch.distributed as dist

    from uniemox.finetune.ema import FinetuneEma

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # each rank starts from other weights: only the broadcast can make them agree
    engine = types.SimpleNamespace(module=torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)))
    ema = FinetuneEma(engine, decay=0.9, warmup=False, zero_stage=2)
    saved = {k: torch.full_like(v, 7) for k, v in ema.module.state_dict().items()} if rank == 0 else None
    ema.load_state_dict(saved, world=2)
    torch.save(ema.module.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_a_resumed_ema_reaches_every_rank_from_rank_0(tmp_path):
    """Rank 0 alone checkpoints the EMA; on resume the others receive it (two real gloo ranks)."""
    import torch.multiprocessing as mp
    from subprocesses import free_port

    mp.spawn(_rank_main, args=(free_port(), str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(states[1][k], torch.full_like(v, 7)) for k, v in states[0].items())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
