"""Adversarial inputs, each reproduced for real: hostile pickles in every kind of checkpoint file,
malformed sample fields, 16-bit PNGs, FIFOs, incompatible resumes, kills, bad values, a full or
read-only disk. Each ends in one line (exit code 2) or in a skipped-and-counted sample; nothing
runs code, nothing is lost, no step is logged twice."""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from subprocesses import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(REPO, "launch", "pretrain.py")
PREDICT = os.path.join(REPO, "launch", "predict.py")
TINY = ["model.arch={img_size: 32, depth: 2, decoder_depth: 1}", "data.batch_size=8", "data.num_workers=1",
        "log.every=1", "log.progress=false", "log.image_every=0", "checkpoint.every=2"]
PWNED = "/tmp/uniemox-pwned-by-a-checkpoint"


def run(script, args, env=None, timeout=600):
    return subprocess.run([sys.executable, script] + list(args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=child_env(env))


def pretrain(run_dir, *args, stage=2, env=None):
    """A tiny pretraining run in exactly ZeRO stage ``stage`` (on one rank too: the files of that stage)."""
    return run(PRETRAIN, ["--deepspeed", f"zero{stage}", "--run-dir", str(run_dir), "train.single_rank_stage0=false"]
               + TINY + list(args), env=env)


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_line_error(proc, *needles):
    """Exit code 2, no traceback, and the last line says it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), last
    return last


class Payload:
    """Unpickling this runs a shell command (what a hostile checkpoint would do)."""

    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real checkpoints: a ZeRO-2 and a ZeRO-0 run of 2 steps each."""
    root = tmp_path_factory.mktemp("runs")
    for stage in (2, 0):
        ok(pretrain(root / f"zero{stage}", "optim.max_steps=2", stage=stage))
    return root


def _poison(path):
    obj = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by the test
    obj["innocent_looking"] = Payload()
    torch.save(obj, path)


@pytest.mark.parametrize("stage,file", [(2, "mp_rank_00_model_states.pt"),
                                        (2, "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
                                        (0, "mp_rank_00_model_states.pt"),
                                        (2, "trainer_rank0.pt")])
def test_a_hostile_pickle_in_any_checkpoint_file_never_runs(runs, tmp_path, stage, file):
    run_dir = tmp_path / "run"
    shutil.copytree(runs / f"zero{stage}", run_dir)
    target = run_dir / "checkpoints" / "step_00000002" / file
    _poison(target)
    if os.path.exists(PWNED):
        os.remove(PWNED)
    resumed = pretrain(run_dir, "optim.max_steps=4", "--resume", "auto", stage=stage)
    one_line_error(resumed, str(target), "posix.system", "could run code")
    exported = run(PRETRAIN, ["--export", str(target.parent), str(tmp_path / "export")])
    one_line_error(exported, str(target), "posix.system")
    assert not os.path.exists(PWNED), "a checkpoint ran code"


def test_a_hostile_safetensors_file_in_predict_is_one_line(tmp_path):
    import uniemox.exports.hub as tm
    from uniemox.models import create_encoder
    model = create_encoder("uniemox_vit_tiny_patch16", num_classes=3, img_size=32, depth=2)
    tm.write_export(model.state_dict(), str(tmp_path / "best"), "uniemox_vit_tiny_patch16",
                    {"img_size": 32, "depth": 2}, 3, "avg", ["a", "b", "c"], {"task": "single_label"})
    (tmp_path / "best" / "model.safetensors").write_bytes((10 ** 12).to_bytes(8, "little") + b"{}")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "x.jpg")
    one_line_error(run(PREDICT, ["--model", str(tmp_path / "best"), str(tmp_path / "x.jpg")]),
                   "model.safetensors", "header")


# ---- data ---------------------------------------------------------------------------------------
def _jpeg(color):
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 48, 3), color, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


BAD_FIELDS = {"box3": {"person_box": [1, 2, 3]}, "box_nan": {"person_box": [1, 2, float("nan"), 9]},
              "box_str": {"person_box": ["1", "2", "30", "40"]}, "box_dict": {"person_box": {"x": 1}},
              "box_flipped": {"person_box": [30, 2, 10, 40]}, "label_str": {"label": "3"},
              "label_bool": {"label": True}, "label_out": {"label": 8}, "label_neg": {"label": -1},
              "labels_out": {"labels": [1, 99]}, "attrs_list": {"attributes": ["scene", "beach"]},
              "attrs_nested": {"attributes": {"scene": {"deep": 1}}}}
KIND = {"box3": "bad_person_box", "box_nan": "bad_person_box", "box_str": "bad_person_box",
        "box_dict": "bad_person_box", "box_flipped": "bad_person_box", "label_str": "bad_label",
        "label_bool": "bad_label", "label_out": "bad_label", "label_neg": "bad_label", "labels_out": "bad_label",
        "attrs_list": "bad_attributes", "attrs_nested": "bad_attributes"}


@pytest.fixture(scope="module")
def damaged_shards(tmp_path_factory):
    """Two shards with a manifest (8 classes): 20 good samples and one of each malformed kind."""
    import webdataset as wds
    from uniemox.data.manifest import describe_shards, write_manifest
    from uniemox.data.prompts import MIKELS_EMOTIONS
    root = tmp_path_factory.mktemp("damaged")
    counts = [0, 0]
    for shard in range(2):
        with wds.TarWriter(str(root / f"train-{shard:06d}.tar")) as w:
            for i in range(10):
                meta = {"label": i % 8, "label_name": MIKELS_EMOTIONS[i % 8], "person_box": [2.0, 2.0, 30.0, 36.0]}
                w.write({"__key__": f"good{shard}_{i}", "jpg": _jpeg(20 * i), "json": json.dumps(meta)})
                counts[shard] += 1
            for name, bad in list(BAD_FIELDS.items())[shard::2]:
                meta = dict({"label": 1, "label_name": "anger", "person_box": None}, **bad)
                w.write({"__key__": f"bad_{name}", "jpg": _jpeg(90), "json": json.dumps(meta)})
                counts[shard] += 1
    write_manifest(str(root), {"format": "uniemox-shards", "version": 1, "classes": list(MIKELS_EMOTIONS),
                               "splits": {"train": {"count": sum(counts),
                                                    "shards": describe_shards(str(root), "train", counts)}}})
    return root


@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_malformed_sample_fields_are_skipped_and_counted_by_kind(damaged_shards, mode):
    from uniemox.data import build_labeled_loader, build_pretrain_loader, shard_urls
    urls = shard_urls(str(damaged_shards))
    if mode == "pretrain":
        loader = build_pretrain_loader(urls, batch_size=4, num_workers=0, image_size=32, shuffle_buffer=1)
    else:
        loader = build_labeled_loader(urls, batch_size=4, num_workers=0, image_size=32, train=True,
                                      shuffle_buffer=1)
    keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == 20 and all(k.startswith("good") for k in keys)
    expected = {}
    for name in BAD_FIELDS:
        expected[KIND[name]] = expected.get(KIND[name], 0) + 1
    assert {k: v for k, v in loader.skip_counts.items() if v} == expected


def test_evaluation_reports_what_it_skipped(damaged_shards, tmp_path):
    from uniemox.eval.evaluate import evaluate_split
    from uniemox.eval.report import format_summary
    from uniemox.eval.scorers import Scorer
    root = tmp_path / "shards"
    shutil.copytree(damaged_shards, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["splits"]["test"] = manifest["splits"].pop("train")
    for entry in manifest["splits"]["test"]["shards"]:
        os.rename(root / entry["file"], root / entry["file"].replace("train", "test"))
        entry["file"] = entry["file"].replace("train", "test")
    (root / "manifest.json").write_text(json.dumps(manifest))
    scorer = Scorer(lambda s, p, h: torch.full((len(s), 8), 1 / 8), manifest["classes"], 32, False, False)
    metrics = evaluate_split(scorer, str(root), "test", 8, out_dir=str(tmp_path / "out"))
    assert metrics["num_samples"] == 20 and sum(metrics["skipped"].values()) == len(BAD_FIELDS)
    assert json.loads((tmp_path / "out" / "test.json").read_text())["skipped"] == metrics["skipped"]
    assert "samples 20 scored, 12 skipped (bad attributes 2, bad label 5, bad person box 5)" in format_summary(metrics)


def test_skip_counts_continue_across_a_resume_without_doubling(tmp_path):
    """A truncated shard before the resume position is not counted a second time."""
    from uniemox.data import build_pretrain_loader, ensure_sample_shards, shard_urls
    urls = shard_urls(ensure_sample_shards())[:4]
    damaged = tmp_path / "train-000000.tar"
    data = open(urls[0], "rb").read()
    damaged.write_bytes(data[: len(data) // 2])  # cut in the middle of a member
    urls = [str(damaged)] + urls[1:]

    def build():
        return build_pretrain_loader(urls, batch_size=4, num_workers=0, image_size=32, shuffle_buffer=8)
    straight = build()
    list(straight)
    resumed = build()
    it = iter(resumed)
    for _ in range(5):
        next(it)
    state = resumed.state_dict()
    again = build()
    again.load_state_dict(state)
    list(again)
    assert straight.skip_counts["truncated_shard"] == 1
    assert again.skip_counts == straight.skip_counts


def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
    import skimage.data
    from uniemox.data.images import decode_image
    gray = skimage.data.camera()  # a real photograph, 8-bit grayscale
    path = tmp_path / "camera16.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(path)  # the same picture in 16 bits
    assert Image.open(path).mode.startswith("I;16")
    assert (np.asarray(Image.open(path).convert("RGB")) == 255).mean() > 0.5  # what plain Pillow does
    decoded = np.asarray(decode_image(path.read_bytes()))
    assert decoded.shape == gray.shape + (3,) and np.array_equal(decoded[..., 0], gray)


def test_predict_skips_a_fifo_with_a_line(tmp_path):
    import uniemox.exports.hub as tm
    from uniemox.models import create_encoder
    model = create_encoder("uniemox_vit_tiny_patch16", num_classes=3, img_size=32, depth=2)
    tm.write_export(model.state_dict(), str(tmp_path / "best"), "uniemox_vit_tiny_patch16",
                    {"img_size": 32, "depth": 2}, 3, "avg", ["a", "b", "c"], {"task": "single_label"})
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photos / "real.jpg")
    os.mkfifo(photos / "blocking.jpg")
    proc = run(PREDICT, ["--model", str(tmp_path / "best"), str(photos), "--format", "json"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["path"] for r in json.loads(proc.stdout)] == [str(photos / "real.jpg")]
    assert f"skipped {photos / 'blocking.jpg'}: not a regular file" in proc.stderr


# ---- resume and records ---------------------------------------------------------------------------
def test_an_incompatible_resume_is_refused_and_leaves_the_record(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs / "zero2", run_dir)
    record = (run_dir / "config.yaml").read_bytes()
    proc = pretrain(run_dir, "optim.max_steps=4", "--resume", "auto",
                    "model.arch={img_size: 32, depth: 3, decoder_depth: 1}", "model.fusion=weighted_sum")
    one_line_error(proc, "cannot resume", "model.arch.depth: 2 -> 3", "model.fusion: 'easy' -> 'weighted_sum'")
    stage = pretrain(run_dir, "optim.max_steps=4", "--resume", "auto", stage=0)
    one_line_error(stage, "zero_stage: 2 -> 0")
    assert (run_dir / "config.yaml").read_bytes() == record
    # a fresh run never starts over a run's checkpoints
    one_line_error(pretrain(run_dir, "optim.max_steps=4"), "already holds a run", "--resume auto")
    assert (run_dir / "config.yaml").read_bytes() == record


def test_export_reads_the_architecture_from_the_checkpoint(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs / "zero2", run_dir)
    (run_dir / "config.yaml").write_text("model: {name: uniemox_vit_base_patch16}\n")  # a record gone wrong
    ok(run(PRETRAIN, ["--export", str(run_dir / "checkpoints" / "step_00000002"), str(tmp_path / "export")]))
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["run_config"]["model"]["arch"] == {"img_size": 32, "depth": 2, "decoder_depth": 1}


def test_no_step_is_logged_twice_after_kill_and_resume(tmp_path):
    killed = pretrain(tmp_path, "optim.max_steps=6", env={"UNIEMOX_FAULT": "kill@step:5"})
    assert killed.returncode == -9
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]  # step 5 was logged, its checkpoint (at 4) is older
    ok(pretrain(tmp_path, "optim.max_steps=6", "--resume", "auto"))
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "tb")).Reload().Scalars("loss/loss")
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]


# ---- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["log.every=0"], "config key 'log.every': must be in [1, unbounded, got 0"),
    (["model.mask_ratio=1.0"], "config key 'model.mask_ratio': must be in [0.0, 1.0), got 1.0"),
    (["optim.max_steps=-5"], "config key 'optim.max_steps': must be in [0, unbounded, got -5"),
    (["checkpoint.every=-1"], "config key 'checkpoint.every'"),
    (["--deepspeed", "LIST"], "must hold a JSON object, got a list"),
    (["--deepspeed", "BF16_TRUE"], "'bf16' must be an object"),
    (["--deepspeed", "STAGE5"], "zero_optimization.stage must be 0, 1, 2 or 3, got 5"),
    (["--deepspeed", "MISSPELT"], "unknown key 'zero_optimisation' (did you mean 'zero_optimization'?)"),
])
def test_bad_values_are_one_line(tmp_path, args, needle):
    files = {"LIST": [1, 2], "BF16_TRUE": {"bf16": True}, "STAGE5": {"zero_optimization": {"stage": 5}},
             "MISSPELT": {"zero_optimisation": {"stage": 2}}}
    args = [str(tmp_path / f"{a}.json") if a in files else a for a in args]
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    proc = run(PRETRAIN, ["--run-dir", str(tmp_path / "run"), "optim.max_steps=1"] + TINY + args)
    one_line_error(proc, needle)


def test_overrides_may_follow_flags_in_every_entry_point(tmp_path):
    from uniemox.launch import finetune, pretrain as pre, train_teacher
    for module in (pre, finetune, train_teacher):
        args = module.parse_args(["data.batch_size=4", "--run-dir", str(tmp_path), "log.every=3"])
        assert args.overrides == ["data.batch_size=4", "log.every=3"]


@pytest.mark.parametrize("stage", ["0", "2"])  # our device-side skip (fused AdamW), DeepSpeed's overflow check
def test_non_finite_steps_are_skipped_counted_and_halt_naming_the_cause(tmp_path, stage):
    proc = pretrain(tmp_path / "skips", "optim.max_steps=6", stage=stage,
                    env={"UNIEMOX_FAULT": "nan_loss@step:2,nan_grad@step:4"})
    ok(proc)
    rows = [json.loads(line) for line in open(tmp_path / "skips" / "metrics.jsonl")]
    assert [r["health/skipped_steps"] for r in rows] == [0, 1, 1, 2, 2, 2]
    assert "loss/loss" not in rows[1]  # step 2's only loss was non-finite: no mean of nothing
    assert all(np.isfinite(r["loss/loss"]) for r in rows if r["step"] != 2)
    halted = pretrain(tmp_path / "halt", "optim.max_steps=6", "train.max_nonfinite=2", stage=stage,
                      env={"UNIEMOX_FAULT": "nan_grad@step:3,nan_grad@step:4"})
    assert halted.returncode == 3
    assert "2 consecutive steps with a non-finite gradient (last at step 4)" in halted.stderr
    halted = pretrain(tmp_path / "halt_loss", "optim.max_steps=6", "train.max_nonfinite=2", stage=stage,
                      env={"UNIEMOX_FAULT": "nan_loss@step:3,nan_loss@step:4"})
    assert "2 consecutive steps with a non-finite loss (last at step 4)" in halted.stderr


def _mount_tmpfs(path, options):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")


def test_a_full_disk_says_so_and_keeps_the_last_checkpoint(runs, tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=40m")
    try:
        run_dir = disk / "run"
        shutil.copytree(runs / "zero2", run_dir)
        filler = disk / "filler"
        free = shutil.disk_usage(disk).free
        with open(filler, "wb") as f:  # leave a little room: the next checkpoint will not fit
            f.truncate(0)
            f.write(b"\0" * max(0, free - (2 << 20)))
        proc = pretrain(run_dir, "optim.max_steps=4", "--resume", "auto", "log.every=10")
        last = one_line_error(proc, "the disk is full", "last complete checkpoint is kept")
        assert str(run_dir / "checkpoints" / "step_00000002") in last
        assert (run_dir / "checkpoints" / "step_00000002" / "COMPLETE").is_file()
        assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000002"
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_read_only_run_dir_is_one_line(tmp_path):
    disk = tmp_path / "ro"
    _mount_tmpfs(disk, "size=1m,ro")
    try:
        proc = pretrain(disk / "run", "optim.max_steps=1")
        one_line_error(proc, "cannot write", "Read-only file system")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
