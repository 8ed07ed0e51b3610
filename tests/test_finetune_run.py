"""The fine-tuning entry point for real: DeepSpeed on CPU, the sample shards and an image folder,
validation, best-checkpoint export, test, a SIGKILLed run resumed, predict == evaluation."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from subprocesses import child_env, deepspeed_launcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINETUNE = os.path.join(REPO, "launch", "finetune.py")
PREDICT = os.path.join(REPO, "launch", "predict.py")
TINY = ["model.name=uniemox_vit_tiny_patch16", "model.arch={img_size: 32, depth: 2}", "data.batch_size=8",
        "data.eval_batch_size=64", "data.num_workers=1", "log.every=1", "log.progress=false"]


def run(script, args, env=None, timeout=300):
    return subprocess.run([sys.executable, script] + list(args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=child_env(env))


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(run_dir):
    rows = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        row = json.loads(line)
        if "loss/train" in row:
            rows[row["step"]] = row["loss/train"]
    return rows


def _ema(tag_dir):
    return torch.load(tag_dir / "trainer_rank0.pt", weights_only=True)["ema"]


def test_finetune_sample_shards_validate_test_and_resume_after_sigkill(tmp_path):
    args = TINY + ["optim.max_steps=6", "eval.every=3", "checkpoint.every=2", "train.ema=true", "--deepspeed",
                   os.path.join(REPO, "configs", "zero2.json")]
    straight = tmp_path / "straight"
    proc = ok(run(FINETUNE, args + ["--run-dir", str(straight)]))
    for name in ("val_step_00000003.json", "val_step_00000006.json", "test.json", "test_confusion.png",
                 "test_predictions.jsonl", "val_step_00000003_confusion.png"):
        assert (straight / "eval" / name).is_file(), name
    test = json.loads((straight / "eval" / "test.json").read_text())
    assert test["num_samples"] == 256 and len(test["confusion_matrix"]) == 8
    assert sum(map(sum, test["confusion_matrix"])) == 256
    best = json.loads((straight / "best" / "config.json").read_text())
    assert best["architecture"] == "uniemox_vit_tiny_patch16" and best["num_classes"] == 8
    assert best["uniemox"]["step"] in (3, 6) and best["label_names"][0] == "amusement"
    assert "test top1" in proc.stdout and list((straight / "tb").glob("events.out.tfevents.*"))
    assert sorted(losses(straight)) == [1, 2, 3, 4, 5, 6]

    killed = tmp_path / "killed"
    proc = run(FINETUNE, args + ["--run-dir", str(killed)], env={"UNIEMOX_FAULT": "kill@step:5"})
    assert proc.returncode == -9
    assert not (killed / "eval" / "test.json").exists()
    ok(run(FINETUNE, args + ["--run-dir", str(killed), "--resume", "auto"]))  # from step 4
    a, b = losses(straight), losses(killed)
    assert [a[s] for s in (5, 6)] == pytest.approx([b[s] for s in (5, 6)], rel=1e-5)
    resumed = json.loads((killed / "eval" / "test.json").read_text())
    assert resumed["top1"] == pytest.approx(test["top1"]) and resumed["confusion_matrix"] == test["confusion_matrix"]
    # the EMA went into the checkpoint and came back: it ends where the uninterrupted run's ends
    ema_a, ema_b = _ema(straight / "checkpoints" / "step_00000006"), _ema(killed / "checkpoints" / "step_00000006")
    assert ema_a.keys() == ema_b.keys() and all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    for run_dir in (straight, killed):
        assert (run_dir / "eval" / "val_ema_step_00000006.json").is_file()


def _image_folder(root, per_split=(6, 2, 2)):
    """JPEG images of 3 colour-coded classes in ROOT/{train,val,test}/CLASS/."""
    rng = np.random.default_rng(0)
    colours = {"calm": (60, 120, 200), "joy": (240, 200, 40), "rage": (200, 30, 30)}
    for split, n in zip(("train", "val", "test"), per_split):
        for name, colour in colours.items():
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{split}_{name}_{i}.jpg", quality=90)
    return root


def test_linear_probe_on_an_image_folder_then_predict_matches_evaluation(tmp_path):
    images = _image_folder(tmp_path / "images")
    run_dir = tmp_path / "run"
    ok(run(FINETUNE, TINY + ["--data", str(images), "--linear-probe", "--label-fraction", "0.5",
                             "--run-dir", str(run_dir), "optim.max_steps=3", "data.batch_size=3", "--deepspeed",
                             os.path.join(REPO, "configs", "zero0.json")]))
    manifest = json.loads((run_dir / "data" / "shards" / "manifest.json").read_text())
    assert manifest["classes"] == ["calm", "joy", "rage"] and manifest["splits"]["train"]["count"] == 18
    fraction = json.loads((run_dir / "data" / "fraction-0.5-seed0" / "manifest.json").read_text())
    assert fraction["splits"]["train"]["per_class"] == {"calm": 3, "joy": 3, "rage": 3}
    config = json.loads((run_dir / "best" / "config.json").read_text())
    assert config["uniemox"]["recipe"] == "linear_probe" and config["global_pool"] == "token"

    rows = [json.loads(line) for line in open(run_dir / "eval" / "test_predictions.jsonl")]
    assert len(rows) == 6
    image = images / "test" / "rage" / "test_rage_1.jpg"
    evaluated = next(r for r in rows if r["key"].endswith("test_rage_1"))
    proc = ok(run(PREDICT, ["--model", str(run_dir / "best"), str(image), "--format", "json", "--top-k", "3"]))
    predicted = json.loads(proc.stdout)[0]
    assert [t["label"] for t in predicted["top"]] == [t["label"] for t in evaluated["top"]]
    assert [t["prob"] for t in predicted["top"]] == pytest.approx([t["prob"] for t in evaluated["top"]], abs=1e-5)
    assert evaluated["label"] == "rage"


def test_bad_input_is_one_clear_line(tmp_path):
    proc = run(FINETUNE, TINY + ["--data", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "r")])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: data.path not found")
    proc = run(FINETUNE, TINY + ["optim.nme=lars", "--run-dir", str(tmp_path / "r")])
    assert proc.returncode == 2 and "did you mean 'name'" in proc.stderr


def test_multi_label_emotic_style_bce_head_and_mean_ap(tmp_path):
    """EMOTIC-style JSON (several categories per person) -> BCE head, mixup on multi-hot targets,
    mean AP and per-category AP in test.json."""
    rng = np.random.default_rng(1)
    cats = ["Peace", "Joy", "Fear", "Anger"]
    ann = {"categories": cats}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        ann[split] = []
        for i in range(n):
            name = f"{split}_{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
            labels = sorted({cats[i % 4], cats[(i * 3 + 1) % 4]})
            ann[split].append({"image": name, "people": [{"bbox": [2, 2, 30, 36], "categories": labels}]})
    (tmp_path / "emotic.json").write_text(json.dumps(ann))
    run_dir = tmp_path / "run"
    ok(run(FINETUNE, TINY + ["--data", str(tmp_path / "emotic.json"), "--dataset", "emotic", "--run-dir",
                             str(run_dir), "optim.max_steps=2", "data.batch_size=4", "--deepspeed",
                             os.path.join(REPO, "configs", "zero0.json")]))
    test = json.loads((run_dir / "eval" / "test.json").read_text())
    assert test["task"] == "multi_label" and test["num_samples"] == 6
    assert set(test["per_class"]) == set(cats) and 0.0 < test["mAP"] <= 1.0
    rows = [json.loads(line) for line in open(run_dir / "eval" / "test_predictions.jsonl")]
    assert all(isinstance(r["label"], list) and len(r["label"]) >= 1 for r in rows)
    assert json.loads((run_dir / "best" / "config.json").read_text())["uniemox"]["task"] == "multi_label"


def test_two_ranks_gather_every_evaluation_sample_once_and_resume_the_ema(tmp_path):
    def two_ranks(run_dir, *extra, env=None):
        return subprocess.run(deepspeed_launcher(2) + [FINETUNE] + TINY + list(extra) +
                              ["optim.max_steps=2", "eval.every=2", "checkpoint.every=1", "train.ema=true",
                               "--label-fraction", "0.5", "--run-dir", str(run_dir), "--deepspeed",
                               os.path.join(REPO, "configs", "zero2.json")],
                              cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env(env))
    ok(two_ranks(tmp_path))
    for name in ("val_step_00000002", "test"):
        metrics = json.loads((tmp_path / "eval" / f"{name}.json").read_text())
        assert metrics["num_samples"] == 256, name
    keys = [json.loads(line)["key"] for line in open(tmp_path / "eval" / "test_predictions.jsonl")]
    assert len(set(keys)) == 256
    assert json.loads((tmp_path / "data" / "fraction-0.5-seed0" / "manifest.json").read_text())["total"] == 128
    tag = tmp_path / "checkpoints" / "step_00000002"
    assert {p.name for p in tag.glob("trainer_rank*.pt")} == {"trainer_rank0.pt", "trainer_rank1.pt"}
    # rank 0 alone checkpoints the EMA; resumed from step 1, rank 1 gets it from rank 0: the EMA and
    # its validation (every rank scores its part of val with its EMA) are the uninterrupted run's
    assert "ema" not in torch.load(tag / "trainer_rank1.pt", weights_only=True)
    killed = tmp_path / "killed"
    assert two_ranks(killed, env={"UNIEMOX_FAULT": "kill@step:2"}).returncode != 0
    ok(two_ranks(killed, "--resume", "auto"))
    ema_a, ema_b = _ema(tag), _ema(killed / "checkpoints" / "step_00000002")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    a, b = (json.loads((d / "eval" / "val_ema_step_00000002.json").read_text()) for d in (tmp_path, killed))
    assert a["num_samples"] == 256 and a["confusion_matrix"] == b["confusion_matrix"]


@pytest.mark.parametrize("stage", ["zero0", "zero2"])
def test_bf16_best_weights_are_the_fp32_master_weights(tmp_path, stage):
    """Under bf16 the module holds rounded weights; best/ must hold the fp32 master weights (the
    optimizer's), as the pretraining export does: most values are then not bf16 numbers."""
    from safetensors.torch import load_file
    ok(run(FINETUNE, TINY + ["optim.max_steps=2", "eval.every=2", "train.precision=bf16", "optim.blr=0.5",
                             "train.single_rank_stage0=false", "--deepspeed", stage, "--run-dir", str(tmp_path)]))
    weights = load_file(str(tmp_path / "best" / "model.safetensors"))
    trained = weights["blocks.0.attn.qkv.weight"]
    assert trained.dtype == torch.float32
    rounded = trained.to(torch.bfloat16).float()
    assert (trained != rounded).float().mean() > 0.5  # fp32 values, not bf16 ones written as fp32


@pytest.mark.parametrize("size", [384, 160])
def test_a_checkpoint_fine_tunes_and_predicts_at_another_image_size(tmp_path, size):
    """A 224 px encoder fine-tuned at 384 px and at 160 px (the data read at that size, the sin-cos
    table generated for that grid), exported, predicting at that size as evaluation did, and at
    224 px through timm."""
    from safetensors.torch import save_file

    from uniemox.models import create_encoder
    init = tmp_path / "encoder-224.safetensors"
    save_file(create_encoder("uniemox_vit_tiny_patch16", img_size=224, depth=2, global_pool="token").state_dict(),
              str(init))
    images = _image_folder(tmp_path / "images")
    run_dir = tmp_path / "run"
    ok(run(FINETUNE, TINY + [f"model.arch={{img_size: {size}, depth: 2}}", f"model.init={init}", "--data", str(images),
                             "--run-dir", str(run_dir), "optim.max_steps=2", "data.batch_size=6", "--deepspeed",
                             os.path.join(REPO, "configs", "zero0.json")]))
    config = json.loads((run_dir / "best" / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, size, size] and config["model_args"]["img_size"] in (size, [size, size])
    rows = [json.loads(line) for line in open(run_dir / "eval" / "test_predictions.jsonl")]
    image = images / "test" / "calm" / "test_calm_0.jpg"
    evaluated = next(r for r in rows if r["key"].endswith("test_calm_0"))
    proc = ok(run(PREDICT, ["--model", str(run_dir / "best"), str(image), "--format", "json", "--top-k", "3"]))
    predicted = json.loads(proc.stdout)[0]
    assert [t["prob"] for t in predicted["top"]] == pytest.approx([t["prob"] for t in evaluated["top"]], abs=1e-5)
    # and as a timm model it takes the checkpoint's size too (its own table for that grid)
    from uniemox.exports.hub import create_from_export
    model, _ = create_from_export(str(run_dir / "best"))
    assert model.pretrained_cfg["input_size"] == (3, size, size) and model(torch.randn(1, 3, 224, 224)).shape == (1, 3)
