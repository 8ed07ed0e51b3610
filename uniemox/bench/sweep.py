"""The step benchmark's command line and its sweep grid.

Grid options take comma-separated lists; every combination (models x batches x mask ratios x
attention backends x kernels x ZeRO stages x eager/compiled) is one configuration. ``--preset gpu`` is the
issue's committed GPU sweep; options given explicitly win over the preset. Everything is
validated here, before a model is built, so bad input costs one line and exit code 2.
"""
import argparse
import itertools
from dataclasses import dataclass
from typing import Dict, List

import torch

from uniemox.config.sections import COMPILE_MODES
from uniemox.errors import UserError

from .data import DATA_SOURCES

BASE = "uniemox_vit_base_patch16"
PRESETS = {  # the committed GPU sweep: ViT-B/16 and ViT-L/16 at mask 0.75 and 0.9, bf16
    "gpu": {"model": f"{BASE},uniemox_vit_large_patch16", "mask_ratio": "0.75,0.9", "batch": "128",
            "precision": "bf16", "device": "cuda"},
}


@dataclass(frozen=True)
class StepCase:
    """One point of the grid."""
    model: str
    batch: int
    mask_ratio: float
    attn: str
    kernels: str
    zero: int
    compile: str = "eager"  # ours: eager | compiled (torch.compile of the student, train.compile)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    lists = parser.add_argument_group("grid (comma-separated lists: every combination is measured)")
    lists.add_argument("--model", default=BASE, help="registered sizes, e.g. uniemox_vit_base_patch16,"
                                                     "uniemox_vit_large_patch16")
    lists.add_argument("--batch", default="128", help="micro batch per step")
    lists.add_argument("--mask-ratio", default="0.75")
    lists.add_argument("--attn", default="auto", help="auto|xformers|sdpa|math (the reference takes the same "
                                                      "unless --reference-attn)")
    lists.add_argument("--kernels", default="auto", help="ours: auto|triton|torch (reference: torch)")
    lists.add_argument("--zero", default="2", help="ours: ZeRO stage 0-3 (configs/zero{N}.json)")
    lists.add_argument("--compile", default="eager", help="ours: eager|compiled (torch.compile of the student, as "
                                                          "train.compile; the reference stays eager)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                        help="torch.compile mode of the compiled cases (train.compile_mode)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="gpu: the committed sweep (ViT-B/16, ViT-L/16 x mask 0.75, 0.9, bf16, batch "
                             "128); explicit options still override it")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--teacher", default="ViT-B-16", help="open_clip model of the frozen teacher "
                                                              "(random weights: speed does not depend on them)")
    parser.add_argument("--arch", default="", help="architecture overrides key=value,... "
                                                   "(e.g. img_size=64,depth=2,decoder_depth=1)")
    parser.add_argument("--data", choices=DATA_SOURCES, default="synthetic")
    parser.add_argument("--shards", default=None, help="--data shards: shard files (brace pattern, '::'-separated) "
                                                       "or a shard folder (its train split); default: the "
                                                       "embedded SYNTHETIC sample set")
    parser.add_argument("--workers", type=int, default=8, help="--data shards: loader workers")
    parser.add_argument("--prompt-pool", type=int, default=0,
                        help="--data synthetic: distinct prompts to draw from (0: every prompt distinct, "
                             "the teacher's prompt cache never hits)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per slot")
    parser.add_argument("--rounds", type=int, default=2, help="timed slots per variant, interleaved: A B B A "
                                                              "for 2")
    parser.add_argument("--reference-attn", default=None, choices=("xformers", "sdpa", "math"),
                        help="the reference's attention backend (default: ours'; the release's: math)")
    parser.add_argument("--keep-stage", action="store_true",
                        help="ours: keep ZeRO-1/2 on one rank (default: as the trainer, which runs them as ZeRO-0)")
    parser.add_argument("--lr", type=float, default=1.5e-4)
    parser.add_argument("--grad-clip", type=float, default=0.0, help="both variants (0: off, the trainer's default)")
    parser.add_argument("--deepspeed", default=None, help="ours: DeepSpeed JSON instead of configs/zero{N}.json")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device dense bf16 peak for MFU (default: uniemox.train.metrics' table)")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="also write a torch.profiler trace + top-kernel table of each variant to DIR")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="results JSON (the CSV and PNG go beside it; default "
                                                    "benchmarks/results/step-<device>-<utc time>.json)")


def _split(text: str, kind, flag: str) -> list:
    try:
        values = [kind(v.strip()) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag}: cannot read {text!r} as a comma-separated list of {kind.__name__}") from None
    if not values:
        raise UserError(f"{flag} is empty")
    return values


def arch_overrides(text: str) -> Dict[str, float]:
    """"img_size=64,mlp_ratio=2.0" -> {"img_size": 64, "mlp_ratio": 2.0}; get_arch checks the keys."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = float(value) if "." in value else int(value)
        except ValueError:
            raise UserError(f"--arch: expected key=number, got {item!r}") from None
    return out


def apply_preset(args: argparse.Namespace) -> None:
    """A preset's values for the options left at their defaults."""
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    for key, value in PRESETS.get(args.preset, {}).items():
        if getattr(args, key) == defaults.get_default(key):
            setattr(args, key, value)


def grid_from_args(args: argparse.Namespace, device: torch.device) -> List[StepCase]:
    """Validated grid; bad values raise UserError before anything is built."""
    from uniemox.kernels.dispatch import resolve_impl
    from uniemox.models import get_arch, num_kept

    models, batches = _split(args.model, str, "--model"), _split(args.batch, int, "--batch")
    ratios, attns = _split(args.mask_ratio, float, "--mask-ratio"), _split(args.attn, str, "--attn")
    kernels, zeros = _split(args.kernels, str, "--kernels"), _split(args.zero, int, "--zero")
    compiles = _split(args.compile, str, "--compile")
    small = {"--batch": min(batches), "--steps": args.steps, "--rounds": args.rounds, "--warmup": args.warmup + 1,
             "--workers": args.workers + 1, "--prompt-pool": args.prompt_pool + 1}
    bad = [flag for flag, v in small.items() if v < 1]
    if bad:
        raise UserError(f"{bad[0]} must be positive (--warmup, --workers, --prompt-pool: not negative)")
    overrides = arch_overrides(args.arch)
    for model in models:
        arch = get_arch(model, **overrides)
        if arch.img_size % arch.patch_size:
            raise UserError(f"{model}: image size {arch.img_size} is not a multiple of patch {arch.patch_size}")
        patches = (arch.img_size // arch.patch_size) ** 2
        for r in ratios:
            if not 0.0 < r < 1.0 or num_kept(patches, r) >= patches:
                raise UserError(f"--mask-ratio {r} must mask at least one patch and keep at least one")
    for a in attns + ([args.reference_attn] if args.reference_attn else []):
        _probe_attention(a, device)
    for k in kernels:
        try:
            resolve_impl(k, device)
        except (ValueError, RuntimeError) as err:
            raise UserError(f"--kernels {k}: {err}") from None
    if any(z not in (0, 1, 2, 3) for z in zeros):
        raise UserError(f"--zero must be 0, 1, 2 or 3, got {args.zero}")
    if any(c not in ("eager", "compiled") for c in compiles):
        raise UserError(f"--compile takes eager and/or compiled, got {args.compile}")
    if "compiled" in compiles and args.warmup < 1:
        raise UserError("--compile compiled needs --warmup 1 or more: the first step compiles")
    # eager cases first: a sweep cut short by its time-out keeps them (inductor compiles for minutes)
    return [StepCase(*c[1:], compile=c[0])
            for c in itertools.product(compiles, models, batches, ratios, attns, kernels, zeros)]


def _probe_attention(backend: str, device: torch.device) -> None:
    """Unknown names and xformers off CUDA are UserErrors; a backend that imports but cannot run
    here (e.g. an xformers wheel built for another torch) is found now, not mid-sweep."""
    from uniemox.models.attention import attention, resolve_backend

    resolve_backend(backend, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.randn(1, 8, 2, 64, device=device, dtype=dtype)
    try:
        attention(q, q, q, backend)
    except Exception as err:  # noqa: BLE001 - any failure means: pick another backend
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise UserError(f"--attn {backend} fails on this device ({type(err).__name__}: {first}); "
                        f"use --attn sdpa") from None
