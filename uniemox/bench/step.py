"""``launch/benchmark.py step``: throughput of the UniEmoX training step against a plain reference.

For every configuration of the grid (models x batches x mask ratios x attention backends x
kernels x ZeRO stages x eager/compiled; comma-separated lists), ``ours`` (the trainer's DeepSpeed
step, eager or with its student compiled as ``train.compile`` does) and
``reference`` (the same model computed the plain way, see ``runners``) are built from the same
seed, in the same precision and with the same attention backend (unless --reference-attn), and
timed in interleaved slots (A B B A, measure.py) in the same process. Each row
reports samples/s, ms/step, analytic training FLOPs per sample
(3 x forward of the trained parts + 1 x forward of the frozen teacher towers,
``uniemox.models.flops``), achieved TFLOP/s, MFU against the device's dense bf16 peak (CUDA
only), peak memory (total and per sample), the data-loading share and the speed-up over the
reference measured in the same run, and the first warm-up step's time (with ``--compile compiled``:
the compilation). Results: one JSON + one CSV (+ a PNG plot) per run.
"""
import argparse
import gc
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

import torch

from uniemox.errors import UserError

from . import plot, results, timing
from .data import make_batches, resolve_shards
from .sweep import BASE, StepCase, add_arguments, apply_preset, arch_overrides, grid_from_args

if TYPE_CHECKING:
    from .measure import Measurement
# .measure and .runners are imported where they are used: they pull in open_clip, torchvision
# and, through torch._dynamo, triton, and `benchmark.py kernels --interpret` must set
# TRITON_INTERPRET before triton is first imported (triton.language reads it at import).

__all__ = ["add_arguments", "run", "measure_case", "COLUMNS", "TARGETS"]

TARGETS = {"model": BASE, "precision": "bf16", "mfu": 0.40, "speedup": 1.5}
REFERENCE = ("fp32 weights, forward under torch.autocast (bf16 when precision is bf16), unfused PyTorch "
             "masking and losses (kernel_impl=torch), ours' attention backend unless --reference-attn, CLIP "
             "teacher in fp32 under the same autocast without inference mode and without prompt cache (prompts "
             "tokenised and encoded every step), loss.item() finiteness check, plain torch.optim.AdamW (torch's "
             "default for the device), no DeepSpeed")
OURS = ("the trainer's step: DeepSpeed engine (ZeRO stage; ZeRO-1/2 as ZeRO-0 on one rank unless --keep-stage; "
        "bf16 weights + fp32 master weights when precision is bf16), chosen attention backend and kernels, "
        "CLIPTeacher (bf16 on CUDA, inference mode, prompt-embedding cache), non-finite guard without host "
        "reads, torch's fused AdamW; compile=compiled: the student under torch.compile (train.compile, DeepSpeed's "
        "engine.compile; the Triton kernels as custom ops, the teacher eager)")
# case: the configuration's index in the grid (its ours and reference rows share it)
COLUMNS = ("case", "model", "img_size", "batch", "mask_ratio", "precision", "variant", "attn", "kernels", "zero",
           "compile", "teacher", "data", "workers", "prompt_pool", "warmup", "steps", "slots", "samples_per_s",
           "ms_per_step", "ms_per_step_min", "ms_per_step_max", "first_step_s", "flops_per_sample", "tflops_per_s", "mfu", "peak_memory_gib",
           "resident_memory_gib", "peak_memory_per_sample_mib", "activation_memory_per_sample_mib",
           "memory_before_build_gib", "data_share", "text_cache_hit_rate", "loss_first", "loss_last",
           "reference_samples_per_s", "speedup_vs_reference", "meets_targets")


def _select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible (--device cpu runs a CPU smoke check)")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row(case: StepCase, variant: str, m: "Measurement", flops_per_sample: float, peak: Optional[float],
         settings: Dict, resolved: Dict[str, str]) -> Dict:
    gib, mib = 2 ** 30, 2 ** 20
    achieved = m.samples_per_s * flops_per_sample
    peak_mem, resident = m.peak_memory_bytes, m.resident_memory_bytes
    return dict(
        model=case.model, img_size=settings["img_size"], batch=case.batch, mask_ratio=case.mask_ratio,
        precision=settings["precision"], variant=variant, attn=resolved["attn"], kernels=resolved["kernels"],
        zero=resolved["zero"], compile=resolved["compile"], teacher=settings["teacher"], data=settings["data"], workers=settings["workers"],
        prompt_pool=settings["prompt_pool"], warmup=settings["warmup"], steps=m.steps, slots=len(m.slot_s),
        samples_per_s=m.samples_per_s, ms_per_step=m.median_ms, ms_per_step_min=min(m.ms_per_step),
        ms_per_step_max=max(m.ms_per_step), first_step_s=m.first_step_s, flops_per_sample=flops_per_sample, tflops_per_s=achieved / 1e12,
        mfu=achieved / peak if peak else None,
        peak_memory_gib=None if peak_mem is None else peak_mem / gib,
        resident_memory_gib=None if resident is None else resident / gib,
        peak_memory_per_sample_mib=None if peak_mem is None else peak_mem / mib / case.batch,
        activation_memory_per_sample_mib=None if peak_mem is None else (peak_mem - resident) / mib / case.batch,
        data_share=m.data_share, text_cache_hit_rate=m.cache_hit_rate,
        loss_first=m.first_loss, loss_last=m.last_loss)


def measure_case(case: StepCase, args: argparse.Namespace, device: torch.device, precision: str,
                 peak: Optional[float]) -> List[Dict]:
    """Both variants of one configuration built from the same seed, warmed up, timed in
    interleaved slots (measure.py), profiled with --profile, freed -> two rows."""
    from uniemox.kernels.dispatch import resolve_impl
    from uniemox.models import get_arch
    from uniemox.models.attention import resolve_backend
    from uniemox.models.flops import pretrainer_step_flops

    from .measure import TimedRunner, interleave, profile_steps
    from .runners import VARIANTS, RunnerSpec, build_runner

    overrides = arch_overrides(args.arch)
    arch = get_arch(case.model, **overrides)
    attn = resolve_backend(case.attn, device)
    reference_attn = args.reference_attn or attn  # the same backend unless told otherwise
    spec = RunnerSpec(case.model, case.batch, case.mask_ratio, precision, case.attn, case.kernels, case.zero,
                      args.teacher, lr=args.lr, grad_clip=args.grad_clip, seed=args.seed, arch=overrides,
                      deepspeed_config=args.deepspeed, reference_attn=reference_attn,
                      single_rank_stage0=not args.keep_stage,
                      compile_mode=args.compile_mode if case.compile == "compiled" else None)
    settings = dict(img_size=arch.img_size, precision=precision, teacher=args.teacher, data=args.data,
                    workers=args.workers if args.data == "shards" else None,
                    prompt_pool=args.prompt_pool if args.data == "synthetic" else None, warmup=args.warmup)
    zero = str(case.zero) if not args.deepspeed else f"json:{os.path.basename(args.deepspeed)}"
    if not args.deepspeed and case.zero in (1, 2) and not args.keep_stage:
        zero += "->0"  # one rank: run as ZeRO-0, as the trainer does (train.single_rank_stage0)
    resolved = {"ours": {"attn": attn, "kernels": resolve_impl(case.kernels, device), "zero": zero,
                         "compile": case.compile},
                "reference": {"attn": reference_attn, "kernels": "torch", "zero": "none", "compile": "eager"}}
    patches = (arch.img_size // arch.patch_size) ** 2
    batches = make_batches(args.data, case.batch, arch.img_size, device, prompt_pool=args.prompt_pool,
                           shards=args.shard_urls, workers=args.workers, seed=args.seed)
    timed, flops, before = {}, {}, {}
    try:
        first = next(batches)
        for variant in VARIANTS:
            before[variant] = torch.cuda.memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
            runner = build_runner(variant, spec, device)
            flops[variant] = pretrainer_step_flops(runner.model, arch, args.teacher).per_sample
            timed[variant] = TimedRunner(runner, batches, first, batch=case.batch, patches=patches, device=device,
                                         seed=args.seed)
            timed[variant].warm_up(args.warmup, args.steps)
        for variant in interleave(VARIANTS, args.rounds):
            timed[variant].slot()
        if args.profile:
            for variant in VARIANTS:
                name = "-".join(str(v) for v in asdict(case).values()) + f"-{variant}"
                profile_steps(timed[variant], steps=3, out_dir=Path(args.profile), name=name)
        rows = [dict(_row(case, v, timed[v].finish(), flops[v], peak, settings, resolved[v]),
                     memory_before_build_gib=before[v]) for v in VARIANTS]
    finally:
        for t in timed.values():
            t.runner.close()
        if hasattr(batches, "close"):
            batches.close()  # ends a shard loader and its worker processes
        if case.compile == "compiled":
            torch._dynamo.reset()  # the compiled code of this case: each case compiles afresh
        _free(device)
    ref = rows[-1]
    for row in rows:
        row["reference_samples_per_s"] = ref["samples_per_s"]
        row["speedup_vs_reference"] = ref["ms_per_step"] / row["ms_per_step"]  # ratio of the median slots
        row["meets_targets"] = _meets_targets(row, device)
    return rows


def _meets_targets(row: Dict, device: torch.device) -> Optional[bool]:
    """The issue's targets apply to ``ours`` at ViT-B/16, bf16, on a GPU with a known peak."""
    if (device.type != "cuda" or row["variant"] != "ours" or row["model"] != TARGETS["model"]
            or row["precision"] != TARGETS["precision"] or row["mfu"] is None):
        return None
    return row["mfu"] >= TARGETS["mfu"] and row["speedup_vs_reference"] >= TARGETS["speedup"]


def run(args: argparse.Namespace) -> Dict:
    """Measure the grid, print a table, write JSON + CSV (after every configuration) and the PNG."""
    from uniemox.models.teacher import CLIPTeacher  # noqa: F401  (registers this project's CLIP configs)
    from uniemox.train.engine import init_distributed, resolve_precision
    from uniemox.train.metrics import device_peak_flops
    import open_clip

    from .runners import VARIANTS

    if args.preset:
        apply_preset(args)
    device = _select_device(args.device)
    grid = grid_from_args(args, device)
    if open_clip.get_model_config(args.teacher) is None:
        raise UserError(f"--teacher {args.teacher!r} is not an open_clip model config")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("the step benchmark measures one device: start it with python, not a multi-rank launcher")
    # missing shards fail here, before any model is built
    args.shard_urls = resolve_shards(args.shards) if args.data == "shards" else None
    precision = resolve_precision(args.precision, device)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its per-engine banner would bury the table
    init_distributed()
    name = timing.device_name(device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else device_peak_flops(device)
    json_path, csv_path = results.results_paths("step", name, args.out)
    payload = {
        "benchmark": "step", "date": timing.utc_now(), "smoke": device.type != "cuda",
        "device": {"type": device.type, "name": name, "peak_flops": peak,
                   "peak_source": "--peak-tflops" if args.peak_tflops else ("table" if peak else None)},
        "versions": results.library_versions(),
        "run": dict({k: v for k, v in vars(args).items() if k not in ("func", "command", "shard_urls")},
                    shard_count=len(args.shard_urls) if args.shard_urls else None),
        "grid": [asdict(c) for c in grid], "ours": OURS, "reference": REFERENCE,
        "flops": "analytic, per sample: 3 x forward of encoder (both views), decoder, projections and fusion "
                 "+ 1 x forward of the teacher's image and text towers (uniemox.models.flops); the same count "
                 "for both variants, so their MFU ratio is their speed ratio",
        "mfu": "achieved FLOP/s / the device's dense bf16 peak (CUDA only)",
        "targets": TARGETS, "rows": [],
    }
    if payload["smoke"]:
        payload["note"] = "CPU figures: a smoke run of the benchmark, not the GPU measurement"
    print(f"[bench] step: {len(grid)} configuration(s) on {name}, {precision}, ours vs reference")
    for index, case in enumerate(grid):
        payload["rows"] += [dict(row, case=index) for row in measure_case(case, args, device, precision, peak)]
        results.write_results(json_path, csv_path, payload, COLUMNS)
        _print_rows(payload["rows"][-len(VARIANTS):])
    png = plot.plot_step(payload, json_path.with_suffix(".png"))
    payload["plot"] = str(png)
    results.write_results(json_path, csv_path, payload, COLUMNS)
    print(f"[bench] results: {json_path}\n[bench]          {csv_path}\n[bench]          {png}")
    return payload


def _print_rows(rows: List[Dict]) -> None:
    def fmt(v, spec, scale=1.0):  # spec like ">7.1f"; a missing value is a right-aligned "-"
        return format("-", spec.split(".")[0]) if v is None else format(v * scale, spec)

    r0 = rows[0]
    print(f"{r0['model']} batch {r0['batch']} mask {r0['mask_ratio']} {r0['precision']} ours {r0['compile']}")
    print(f"  {'variant':<10}{'samples/s':>11}{'ms/step':>10}{'1st step s':>11}{'TFLOP/s':>9}{'MFU %':>7}"
          f"{'peak GiB':>9}{'MiB/sample':>11}{'data %':>7}{'x ref':>7}")
    for r in rows:
        print(f"  {r['variant']:<10}{r['samples_per_s']:>11.2f}{r['ms_per_step']:>10.1f}"
              f"{fmt(r['first_step_s'], '>11.2f')}{r['tflops_per_s']:>9.2f}{fmt(r['mfu'], '>7.1f', 100)}{fmt(r['peak_memory_gib'], '>9.2f')}"
              f"{fmt(r['peak_memory_per_sample_mib'], '>11.1f')}{100 * r['data_share']:>7.1f}"
              f"{r['speedup_vs_reference']:>6.2f}x")
