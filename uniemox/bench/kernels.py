"""``launch/benchmark.py kernels``: each fused Triton kernel against its PyTorch reference.

One timed call is forward + backward at ViT-B/16 shapes by default (batch 256, 224 px,
patch 16: L = 196; encoder width 768, decoder 512, mask ratio 0.75; CLIP width 512), see
``kernel_cases``. Bandwidth: the fused kernel's analytic HBM traffic / the median time. The
reference is charged the same bytes, so its figure is the effective bandwidth of the same
work. The issue's targets are written beside each row: losses >= 2x and >= 60% of peak,
masking >= 1.5x.
"""
import argparse
import os
from dataclasses import asdict
from typing import List, Optional

import torch

from uniemox.errors import UserError

from . import timing
from .kernel_cases import DTYPES, KERNELS, Case, KernelConfig, Tensors, build_cases

TARGET_SPEEDUP = {"random_masking": 1.5, "unmask_tokens": 1.5, "reconstruction": 2.0,
                  "reconstruction_norm_pix": 2.0, "distillation": 2.0}
TARGET_FRAC_PEAK = {"reconstruction": 0.6, "reconstruction_norm_pix": 0.6, "distillation": 0.6}


def _max_abs_diff(a: Tensors, b: Tensors) -> float:
    return max(((x.float() - y.float()).abs().max().item() for x, y in zip(a, b)), default=0.0)


def measure(case: Case, dev: torch.device, warmup: int, reps: int, flush_l2: bool,
            peak: Optional[float]) -> dict:
    (fused_out, fused_grads), (ref_out, ref_grads) = case.step("triton"), case.step("torch")
    row = {"kernel": case.name, "shapes": case.shapes, "bytes": case.bytes_moved,
           "max_abs_diff": {"forward": _max_abs_diff(fused_out, ref_out),
                            "grad": _max_abs_diff(fused_grads, ref_grads)}}
    for impl in ("triton", "torch"):
        ms, _ = timing.median_ms(lambda: case.step(impl), dev, warmup, reps, flush_l2)
        gbps = case.bytes_moved / ms / 1e6
        row[f"{impl}_ms"] = ms
        row[f"{impl}_gbps"] = gbps
        row[f"{impl}_frac_peak"] = gbps / peak if peak else None
    row["speedup"] = row["torch_ms"] / row["triton_ms"]
    targets = {"speedup": TARGET_SPEEDUP[case.name], "frac_peak": TARGET_FRAC_PEAK.get(case.name)}
    row["targets"] = targets
    met = None  # only a GPU run with a known peak can meet them
    if dev.type == "cuda" and (peak or targets["frac_peak"] is None):
        met = row["speedup"] >= targets["speedup"] and (
            targets["frac_peak"] is None or row["triton_frac_peak"] >= targets["frac_peak"])
    row["meets_targets"] = met
    return row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = KernelConfig()
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument("--image-size", type=int, default=d.image_size)
    parser.add_argument("--patch-size", type=int, default=d.patch_size)
    parser.add_argument("--embed-dim", type=int, default=d.embed_dim, help="random masking width")
    parser.add_argument("--decoder-dim", type=int, default=d.decoder_dim, help="unmask width")
    parser.add_argument("--mask-ratio", type=float, default=d.mask_ratio)
    parser.add_argument("--distill-dim", type=int, default=d.distill_dim)
    parser.add_argument("--text-rows", type=int, default=None,
                        help="text rows M of the distillation (default: the batch)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=d.dtype)
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help=f"comma-separated subset of {','.join(KERNELS)}")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--no-l2-flush", action="store_true", help="time with a warm L2 cache")
    parser.add_argument("--peak-gbps", type=float, default=None,
                        help="device peak memory bandwidth, GB/s (default: from the table "
                             "for H100/H200)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--interpret", action="store_true",
                        help="with --device cpu: a smoke run under the Triton interpreter that "
                             "checks the results file, not performance")
    parser.add_argument("--out", default=None, help="results file (default: benchmarks/results/"
                                                    "kernels-<device>-<utc time>.json)")


def config_from_args(args: argparse.Namespace) -> KernelConfig:
    cfg = KernelConfig(batch=args.batch, image_size=args.image_size, patch_size=args.patch_size,
                       embed_dim=args.embed_dim, decoder_dim=args.decoder_dim,
                       mask_ratio=args.mask_ratio, distill_dim=args.distill_dim,
                       text_rows=args.text_rows, dtype=args.dtype)
    sizes = {"batch": cfg.batch, "image-size": cfg.image_size, "patch-size": cfg.patch_size,
             "embed-dim": cfg.embed_dim, "decoder-dim": cfg.decoder_dim,
             "distill-dim": cfg.distill_dim, "text-rows": cfg.text_rows or 1,
             "reps": args.reps}
    bad = [k for k, v in sizes.items() if v < 1] + (["warmup"] if args.warmup < 0 else [])
    if bad:
        raise UserError(f"--{bad[0]} must be positive (--warmup: not negative)")
    if cfg.image_size % cfg.patch_size:
        raise UserError(f"--image-size {cfg.image_size} is not a multiple of --patch-size {cfg.patch_size}")
    if not 0.0 < cfg.mask_ratio < 1.0 or cfg.len_keep < 1:
        raise UserError(f"--mask-ratio {cfg.mask_ratio} must keep at least one of {cfg.tokens} patches "
                        "and remove at least one")
    return cfg


def _select_device(args: argparse.Namespace) -> torch.device:
    if args.device == "cpu":
        if not args.interpret:
            raise UserError("the kernel benchmark measures GPU kernels: run it on a CUDA device "
                            "(--device cpu only with --interpret, a smoke check of the output)")
        os.environ["TRITON_INTERPRET"] = "1"  # before the Triton kernels are first imported
        return torch.device("cpu")
    if args.interpret:
        raise UserError("--interpret is for --device cpu only")
    if not torch.cuda.is_available():
        raise UserError("the kernel benchmark is a GPU benchmark and no CUDA device is visible; "
                        "--device cpu --interpret runs a smoke check of the output format only")
    return torch.device("cuda")


def run(args: argparse.Namespace) -> dict:
    """Measure, print a table, write the results file; returns the payload."""
    cfg = config_from_args(args)
    names = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = sorted(set(names) - set(KERNELS))
    if unknown or not names:
        raise UserError(f"--kernels: unknown {unknown or 'empty list'}; choose from {','.join(KERNELS)}")
    dev = _select_device(args)
    name = timing.device_name(dev)
    peak = args.peak_gbps or (timing.peak_gbps(name) if dev.type == "cuda" else None)
    if dev.type == "cuda" and peak is None:
        print(f"[bench] {name} is not in the peak-bandwidth table: pass --peak-gbps for fractions")
    flush = dev.type == "cuda" and not args.no_l2_flush
    rows = [measure(case, dev, args.warmup, args.reps, flush, peak)
            for case in build_cases(cfg, dev, names)]
    payload = {
        "benchmark": "kernels", "date": timing.utc_now(),
        "device": {"type": dev.type, "name": name, "peak_gbps": peak,
                   "peak_source": "--peak-gbps" if args.peak_gbps else ("table" if peak else None)},
        "smoke": dev.type != "cuda",
        "versions": timing.versions(), "config": asdict(cfg),
        "timing": {"warmup": args.warmup, "reps": args.reps, "statistic": "median",
                   "l2_flush": flush, "unit": "ms per forward + backward"},
        "bytes": "analytic HBM traffic of the fused kernels, charged to both implementations",
        "rows": rows,
    }
    if payload["smoke"]:
        payload["note"] = "CPU interpreter smoke run: the timings say nothing about the kernels"
    out = timing.write_json(args.out or timing.default_results_path("kernels", name), payload)
    _print_table(rows, out)
    return payload


def _print_table(rows: List[dict], out) -> None:
    print(f"{'kernel':<26}{'triton ms':>11}{'torch ms':>11}{'speed-up':>10}{'% peak':>9}")
    for r in rows:
        frac = "-" if r["triton_frac_peak"] is None else f"{100 * r['triton_frac_peak']:.0f}"
        print(f"{r['kernel']:<26}{r['triton_ms']:>11.3f}{r['torch_ms']:>11.3f}"
              f"{r['speedup']:>9.2f}x{frac:>9}")
    print(f"[bench] results: {out}")
