"""launch/benchmark.py step / loader on the CPU: a tiny model, synthetic data and real shards, a few
steps; the results files are well-formed; the analytic FLOPs agree with an independent count
(torch's FlopCounterMode over the real modules' forward and backward). CPU timings are not
checked: they say nothing about the GPU step."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from subprocesses import child_env
from uniemox.bench.data import synthetic_prompt
from uniemox.bench.runners import ReleaseTeacher
from uniemox.bench.step import apply_preset
from uniemox.exports.teacher import load_teacher
from uniemox.launch.benchmark import build_parser, main
from uniemox.models import create_encoder, create_pretrainer, get_arch
from uniemox.models.flops import mae_forward_flops, pretrainer_step_flops, vit_forward_flops
from uniemox.models.mae import MaskedAutoencoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARCH = "img_size=64,depth=2,decoder_depth=1"
TINY = ["step", "--device", "cpu", "--model", "uniemox_vit_tiny_patch16", "--arch", ARCH,
        "--teacher", "uniemox-clip-tiny", "--batch", "4", "--warmup", "1", "--steps", "2", "--zero", "0"]
FIELDS = ("samples_per_s", "ms_per_step", "flops_per_sample", "tflops_per_s", "data_share",
          "speedup_vs_reference", "reference_samples_per_s", "loss_first", "loss_last")


def _count(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):  # the math path is made of ops the counter knows
        fn()
    return counter.get_total_flops()


# -- FLOPs: the analytic count against the ops the real modules run ------------------------------

def test_vit_b16_forward_is_35_1_gflops_counted_on_the_real_module():
    arch = get_arch("uniemox_vit_base_patch16")
    with torch.device("meta"):  # shapes only: the full-size model costs no memory or time
        encoder = create_encoder("uniemox_vit_base_patch16", attn_backend="math")
        x = torch.empty(1, 3, 224, 224)
    counted = _count(lambda: encoder.forward_features(x))
    assert counted == pytest.approx(vit_forward_flops(arch), rel=1e-4)
    assert round(vit_forward_flops(arch) / 1e9, 1) == 35.1


def test_mae_b_training_at_mask_075_is_58_7_gflops_per_view():
    arch = get_arch("uniemox_vit_base_patch16")
    with torch.device("meta"):
        mae = MaskedAutoencoder(**arch.encoder_kwargs(), **arch.decoder_kwargs(), attn_backend="math",
                                kernel_impl="torch")
        x = torch.empty(1, 3, 224, 224)

    def step():
        loss, _, _ = mae(x, 0.75)
        loss.backward()

    analytic = 3 * mae_forward_flops(arch, 0.75)
    assert round(analytic / 1e9, 1) == 58.7
    # forward + backward as autograd runs it: 3 x forward, less the patch embedding's input
    # gradient, which nothing needs (the image is not a parameter)
    patch_input_grad = 2 * 196 * 3 * 16 * 16 * 768
    assert _count(step) == pytest.approx(analytic - patch_input_grad, rel=1e-3)


def test_whole_step_flops_match_the_counted_step_with_teacher():
    """Two views, decoder, fusion, losses and the teacher's two towers, as in the benchmark."""
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA fast path is invisible to the counter
    try:
        teacher = load_teacher("uniemox-clip-tiny", pretrained="none", cls=ReleaseTeacher, precision="fp32",
                               text_cache_size=0)
        kw = dict(img_size=64, depth=2, decoder_depth=1)
        model = create_pretrainer("uniemox_vit_tiny_patch16", proj_dim=teacher.embed_dim, kernel_impl="torch",
                                  attn_backend="math", **kw)
        model.attach_teacher(teacher)
        batch, x = 4, torch.randn(2, 4, 3, 64, 64)

        def step():
            model(x[0], x[1], [synthetic_prompt(i) for i in range(batch)])["loss"].backward()

        counted = _count(step) / batch
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    arch = get_arch("uniemox_vit_tiny_patch16", **kw)
    flops = pretrainer_step_flops(model, arch, "uniemox-clip-tiny")
    assert flops.frozen_forward > 0 and flops.per_sample == 3 * flops.trained_forward + flops.frozen_forward
    patch_input_grad = 2 * (2 * 16 * 3 * 16 * 16 * arch.embed_dim)  # both views, as above
    assert counted == pytest.approx(flops.per_sample - patch_input_grad, rel=1e-3)


# -- the step benchmark ---------------------------------------------------------------------------

def _read(out):
    res = json.loads(out.read_text())
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return res, rows


def test_synthetic_sweep_writes_json_csv_png_and_both_variants_compute_the_same_step(tmp_path):
    out = tmp_path / "step.json"
    assert main(TINY + ["--mask-ratio", "0.75,0.9", "--prompt-pool", "2", "--out", str(out)]) == 0
    res, rows = _read(out)
    assert res["benchmark"] == "step" and res["smoke"] is True and "CPU" in res["note"]
    assert res["device"]["type"] == "cpu" and res["device"]["peak_flops"] is None
    assert res["versions"]["torch"] == torch.__version__ and res["versions"]["deepspeed"]
    assert "ours' attention backend" in res["reference"] and "DeepSpeed" in res["ours"]
    assert [(r["mask_ratio"], r["variant"]) for r in res["rows"]] == [
        (0.75, "ours"), (0.75, "reference"), (0.9, "ours"), (0.9, "reference")]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(rows) == 4 and rows[0]["device"] == res["device"]["name"] and rows[0]["date"] == res["date"]
    arch = get_arch("uniemox_vit_tiny_patch16", img_size=64, depth=2, decoder_depth=1)
    for row, flat in zip(res["rows"], rows):
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in FIELDS if k != "data_share")
        assert 0 <= row["data_share"] < 1 and row["steps"] == 2 and row["slots"] == 2 and row["batch"] == 4
        assert row["ms_per_step_min"] <= row["ms_per_step"] <= row["ms_per_step_max"]
        assert row["speedup_vs_reference"] == pytest.approx(row["samples_per_s"] / row["reference_samples_per_s"])
        assert row["tflops_per_s"] == pytest.approx(row["samples_per_s"] * row["flops_per_sample"] / 1e12)
        assert row["mfu"] is None and row["peak_memory_gib"] is None and row["meets_targets"] is None
        assert float(flat["samples_per_s"]) == pytest.approx(row["samples_per_s"]) and flat["mfu"] == ""
    ours, ref = res["rows"][0], res["rows"][1]
    assert (ours["attn"], ours["kernels"], ours["zero"]) == ("sdpa", "torch", "0")
    assert (ref["attn"], ref["kernels"], ref["zero"]) == ("sdpa", "torch", "none")  # the same backend
    assert ref["speedup_vs_reference"] == 1.0
    # same seed, batches and masks, fp32: the reference computes the same loss as ours
    assert ours["loss_first"] == pytest.approx(ref["loss_first"], rel=1e-5)
    # 2 distinct prompts, seen in warm-up: ours' cache serves every timed prompt; the reference has none
    assert ours["text_cache_hit_rate"] == 1.0 and ref["text_cache_hit_rate"] is None
    assert res["rows"][2]["flops_per_sample"] < ours["flops_per_sample"]  # fewer kept tokens at 0.9
    model = create_pretrainer("uniemox_vit_tiny_patch16", proj_dim=64, mask_ratio=0.75, img_size=64, depth=2,
                              decoder_depth=1)
    assert ours["flops_per_sample"] == pretrainer_step_flops(model, arch, "uniemox-clip-tiny").per_sample


def test_bf16_paths_run_on_the_cpu(tmp_path):
    """The GPU's precision paths: a bf16 DeepSpeed engine (bf16 weights and inputs) against fp32
    weights under bf16 autocast with the fp32 teacher inside it; the losses agree to bf16 accuracy."""
    out = tmp_path / "bf16.json"
    args = TINY + ["--precision", "bf16", "--arch", "img_size=32,depth=1,decoder_depth=1", "--batch", "2",
                   "--warmup", "0", "--steps", "1", "--out", str(out)]
    assert main(args) == 0
    ours, ref = json.loads(out.read_text())["rows"]
    assert ours["precision"] == ref["precision"] == "bf16"
    assert ours["loss_first"] == pytest.approx(ref["loss_first"], rel=2e-2)


def test_eager_and_compiled_students_compute_the_same_step(tmp_path):
    """--compile eager,compiled: a grid dimension (eager cases first), a column of the rows; the
    compiled student (inductor; one small case: it compiles for a minute or two on 2 cores) gives
    the reference's first loss, and its first warm-up step holds the compilation."""
    out = tmp_path / "compile.json"
    args = TINY + ["--arch", "img_size=32,depth=1,decoder_depth=1", "--batch", "2", "--steps", "1", "--rounds", "1",
                   "--compile", "eager,compiled", "--out", str(out)]
    assert main(args) == 0
    res, rows = _read(out)
    assert [(r["case"], r["variant"], r["compile"]) for r in res["rows"]] == [
        (0, "ours", "eager"), (0, "reference", "eager"), (1, "ours", "compiled"), (1, "reference", "eager")]
    assert [r["compile"] for r in rows] == ["eager", "eager", "compiled", "eager"]
    eager, compiled = res["rows"][0], res["rows"][2]
    assert all(r["first_step_s"] > 0 for r in res["rows"]) and compiled["first_step_s"] > eager["first_step_s"]
    for row in res["rows"]:  # fp32, same seed, batch and masks: the same loss, compiled or not
        assert row["loss_first"] == pytest.approx(eager["loss_first"], rel=1e-5)


@pytest.fixture(scope="module")
def sample_shards(tmp_path_factory):
    from uniemox.data.sample import ensure_sample_shards

    return ensure_sample_shards(str(tmp_path_factory.mktemp("cache")), images_per_class_per_split=2, shard_size=4)


def test_shards_mode_times_the_real_loader(tmp_path, sample_shards):
    out = tmp_path / "shards.json"
    assert main(TINY + ["--data", "shards", "--shards", sample_shards, "--workers", "1", "--out", str(out)]) == 0
    res, rows = _read(out)
    ours, ref = res["rows"]
    assert ours["data"] == ref["data"] == "shards" and ours["workers"] == 1 and ours["prompt_pool"] is None
    assert 0 < ours["data_share"] < 1 and 0 < ref["data_share"] < 1
    assert 0 <= ours["text_cache_hit_rate"] <= 1 and ref["text_cache_hit_rate"] is None
    assert ours["loss_first"] == pytest.approx(ref["loss_first"], rel=1e-5)  # the same first batch
    assert [r["variant"] for r in rows] == ["ours", "reference"]


def test_loader_against_the_plain_pipeline(tmp_path, sample_shards):
    out = tmp_path / "loader.json"
    args = ["loader", "--shards", sample_shards, "--workers", "0,1", "--batch", "4", "--image-size", "32",
            "--batches", "3", "--warmup", "1", "--out", str(out)]
    assert main(args) == 0
    res, rows = _read(out)
    assert res["benchmark"] == "loader" and res["host"]["cpus"] >= 1 and "A B B A" in res["timing"]
    assert [(r["workers"], r["variant"]) for r in res["rows"]] == [(0, "ours"), (0, "plain"), (1, "ours"),
                                                                     (1, "plain")] and len(rows) == 4
    for ours, plain in zip(res["rows"][::2], res["rows"][1::2]):
        for row in (ours, plain):
            assert row["slots"] == 2 and row["shards"] == 4 and row["cores"] == max(1, row["workers"])
            assert row["samples_per_s_min"] <= row["samples_per_s"] <= row["samples_per_s_max"]
            assert row["samples_per_s"] == pytest.approx(4 * 3 / (row["ms_per_batch"] * 3 / 1e3))
            assert row["samples_per_cpu_s"] > 0  # its own processes' CPU time, workers included
        assert ours["skipped"] == 0 and plain["skipped"] is None and plain["ratio_vs_plain"] == 1.0
        assert ours["cpu_ratio_vs_plain"] == pytest.approx(ours["samples_per_cpu_s"] / plain["samples_per_cpu_s"])
        assert ours["ratio_vs_plain"] == pytest.approx(plain["ms_per_batch"] / ours["ms_per_batch"])
    assert out.with_suffix(".png").is_file()


def test_default_path_is_under_benchmarks_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(TINY + ["--steps", "1", "--warmup", "0"]) == 0
    (path,) = (tmp_path / "benchmarks" / "results").glob("step-*.json")
    assert path.with_suffix(".csv").is_file() and path.with_suffix(".png").is_file()


def test_gpu_preset_fills_only_what_was_not_given():
    args = build_parser().parse_args(["step", "--preset", "gpu", "--batch", "64"])
    apply_preset(args)
    assert args.model == "uniemox_vit_base_patch16,uniemox_vit_large_patch16"
    assert args.mask_ratio == "0.75,0.9" and args.precision == "bf16" and args.device == "cuda"
    assert args.batch == "64"


@pytest.mark.parametrize("extra, message", [
    (["--mask-ratio", "1.0"], "--mask-ratio"),
    (["--model", "vit_giant"], "unknown model"),
    (["--arch", "depth"], "--arch"),
    (["--arch", "depth=two"], "--arch"),
    (["--arch", "width=2"], "unknown architecture override"),
    (["--attn", "xformers"], "xformers"),
    (["--zero", "5"], "--zero"),
    (["--compile", "fast"], "--compile"),
    (["--compile", "compiled", "--warmup", "0"], "--warmup 1"),
    (["--batch", "0"], "--batch"),
    (["--batch", "two"], "--batch"),
    (["--teacher", "RN-nothing"], "--teacher"),
    (["--data", "shards", "--shards", "/nonexistent/x-{0..1}.tar"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(extra, message, capsys, tmp_path):
    out = tmp_path / "x.json"
    assert main(TINY + extra + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists() and not out.with_suffix(".csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the preset would run")
def test_gpu_preset_without_a_gpu_refuses(capsys):
    assert main(["step", "--preset", "gpu"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_slots_interleave_a_b_b_a():
    from uniemox.bench.measure import interleave
    assert interleave(("ours", "reference"), 2) == ["ours", "reference", "reference", "ours"]
    assert interleave(("ours", "reference"), 3) == ["ours", "reference", "reference", "ours", "ours", "reference"]


def test_reference_backend_and_stage_as_told(tmp_path):
    out = tmp_path / "told.json"
    assert main(TINY + ["--zero", "2", "--reference-attn", "math", "--rounds", "1", "--steps", "1",
                        "--out", str(out)]) == 0
    ours, ref = json.loads(out.read_text())["rows"]
    assert ours["zero"] == "2->0" and ref["attn"] == "math" and ours["slots"] == 1  # one rank: as the trainer
    assert main(TINY + ["--zero", "2", "--keep-stage", "--rounds", "1", "--steps", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["zero"] == "2"


def test_memory_per_sample_with_and_without_checkpointing(tmp_path):
    out = tmp_path / "memory.json"
    assert main(["memory", "--model", "uniemox_vit_tiny_patch16", "--mask-ratio", "0.75", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    plain, recomputed = rows
    assert (plain["grad_checkpointing"], recomputed["grad_checkpointing"]) == (False, True)
    assert 0 < recomputed["saved_mib_per_sample"] < 0.25 * plain["saved_mib_per_sample"]
    assert recomputed["saved_mib_per_sample"] < recomputed["peak_mib_per_sample"] < plain["peak_mib_per_sample"]
    assert recomputed["max_micro_batch"] > plain["max_micro_batch"] > 0
    assert plain["params_millions"] == pytest.approx(9.3, abs=0.2)  # the tiny pretrainer (README's table)


@pytest.mark.parametrize("precision,zero,per_param", [("fp32", 2, 16), ("bf16", 1, 14), ("bf16", 3, 12)])
def test_checkpoint_cost_is_the_saved_engine(tmp_path, precision, zero, per_param):
    """Bytes of a real save: module weights (4 or 2 B/param; ZeRO-3 saves none, its partitions of
    the fp32 master copy are the weights) + the ZeRO optimizer's fp32 master copy and Adam's two
    moments (12 B/param); nothing else of size. A process of its own, as users run it: a ZeRO-3
    engine leaves DeepSpeed's linear wrapper in torch.nn.functional for the rest of its process."""
    out = tmp_path / "checkpoint.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "benchmark.py"), "checkpoint", "--model",
                           "uniemox_vit_tiny_patch16", "--arch", "img_size=32,depth=2,decoder_depth=1", "--precision",
                           precision, "--zero", str(zero), "--repeats", "1", "--dir", str(tmp_path / "ckpt"), "--out",
                           str(out)], capture_output=True, text=True, timeout=600, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(out.read_text())["rows"][0]
    assert row["bytes_per_param"] == pytest.approx(per_param, abs=0.3)
    assert row["save_s"] > 0 and row["disk_write_mb_per_s"] > 0
    assert (tmp_path / "ckpt" / "latest").read_text() == "step_00000001"  # the trainer's own save, committed


def test_scaling_on_paper_follows_its_formulas(tmp_path):
    out = tmp_path / "scaling.json"
    assert main(["scaling", "--datasets", "tiny=6000x5", "--model", "uniemox_vit_tiny_patch16", "--mfu", "0.5",
                 "--peak-tflops", "0.001", "--gpus-per-node", "2", "--target-hours", "1", "--loader-rate", "10",
                 "--image-kb", "100", "--write-mb-per-s", "1", "--node-mtbf-hours", "10", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    arch = get_arch("uniemox_vit_tiny_patch16")
    with torch.device("meta"):
        model = create_pretrainer("uniemox_vit_tiny_patch16", proj_dim=512)
    flops = pretrainer_step_flops(model, arch, "ViT-B-16").per_sample
    per_gpu = 0.5 * 1e9 / flops
    assert row["images_per_s_per_gpu"] == pytest.approx(per_gpu)
    assert row["gpu_hours"] == pytest.approx(30000 / per_gpu / 3600)
    assert row["nodes"] == math.ceil(row["gpu_hours"] / 2) and row["hours"] == pytest.approx(row["gpu_hours"] / 2 / row["nodes"])
    assert row["loader_cores_per_gpu"] == pytest.approx(per_gpu / 10)
    assert row["read_mb_per_s_per_node"] == pytest.approx(per_gpu * 2 * 0.1)
    ckpt = row["params_millions"] * 1e6 * 14
    assert row["save_s"] == pytest.approx(ckpt / (row["nodes"] * 1e6))
    assert row["checkpoint_every_min"] == pytest.approx(math.sqrt(2 * row["save_s"] * 36000 / row["nodes"]) / 60)
    assert row["detection_core_hours"] == pytest.approx(6000 * 0.08 / 3600)
