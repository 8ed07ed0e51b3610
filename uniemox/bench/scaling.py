"""``launch/benchmark.py scaling``: what a pretraining run needs, worked out on paper from the
project's measurements (every input is a flag, its default says where it was measured) and the
analytic step FLOPs (uniemox/models/flops.py). Nothing here runs a model; docs/scaling.md shows
the output and the derivation of every column.

Per dataset (images, epochs) and model:

    samples        = images x epochs
    FLOPs/sample   = 3 x the student's forward (both views, decoder) + 1 x the teacher's towers
    GPU-hours      = samples x FLOPs/sample / (MFU x peak) / 3600
    nodes          = GPU-hours / (target hours x GPUs per node), rounded up
    img/s per GPU  = MFU x peak / FLOPs/sample
    loader cores   = img/s per GPU / loader rate per core       (JPEG decode + two views)
    read MB/s      = img/s per node x shard bytes per image
    checkpoint     = parameters x bytes per parameter           (bf16 weights, fp32 master, Adam)
    save seconds   = checkpoint bytes / (nodes x write bandwidth per node)   (every rank writes its part)
    interval       = sqrt(2 x save seconds x MTBF of the job)   (Young's first-order optimum)
    detection      = images x core-seconds per image            (person boxes, once, at shard time)
"""
import argparse
import math
from typing import Dict, List

from uniemox.errors import UserError

from . import results, timing

COLUMNS = ("dataset", "images", "epochs", "model", "params_millions", "gflops_per_sample", "gpu_hours", "nodes",
           "hours", "images_per_s_per_gpu", "loader_cores_per_gpu", "read_mb_per_s_per_node", "checkpoint_gib",
           "save_s", "checkpoint_every_min", "detection_core_hours")


def _floats(text: str, what: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"{what}: expected positive numbers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", default="EmoSet-118K=100386x200,10M images=10000000x100",
                        help="NAME=IMAGESxEPOCHS, comma-separated (default: the paper's EmoSet train+val for "
                             "its 200-epoch checkpoint, and a 10-million-image set for 100 epochs)")
    parser.add_argument("--model", default="uniemox_vit_base_patch16,uniemox_vit_large_patch16,"
                                           "uniemox_vit_huge_patch14",
                        help="pretrainer architectures, comma-separated")
    parser.add_argument("--mask-ratio", type=float, default=0.75, help="MAE mask ratio (MAE's default)")
    parser.add_argument("--teacher", default="ViT-B-16", help="open_clip config of the frozen CLIP teacher")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of one GPU "
                        "(H100/H200 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.3, help="model FLOPs utilisation assumed (not measured "
                        "here: no GPU; benchmark.py step reports it on one)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--target-hours", type=float, default=24.0, help="wall-clock budget the node count is for")
    parser.add_argument("--loader-rate", type=float, default=540.0, help="decoded two-view images per CPU-second "
                        "of the loader, its workers and the main process's share (measured: benchmark.py loader, "
                        "photo shards at make_shards' default 256 px, 1-2 workers, 2-core CPU; docs/benchmarks.md)")
    parser.add_argument("--image-kb", type=float, default=42.0, help="shard bytes per image, KB (the same photo "
                                                                     "shards, tar headers and JSON included)")
    parser.add_argument("--detect-core-s", type=float, default=0.080, help="core-seconds per image for person "
                        "detection at shard time (measured: 7.7 s for 192 images on 2 cores; docs/data.md)")
    parser.add_argument("--bytes-per-param", type=float, default=14.0, help="checkpoint bytes per parameter "
                        "(measured, bf16 ZeRO-2: benchmark.py checkpoint; ZeRO-3 saves 12)")
    parser.add_argument("--write-mb-per-s", type=float, default=370.0, help="checkpoint save rate per node, "
                        "checkpoint bytes / save seconds (measured: the slowest of benchmark.py checkpoint's runs, "
                        "ViT-B/16 ZeRO-2 bf16, 1.57 GB in 4.2 s, on this project's VM disk)")
    parser.add_argument("--node-mtbf-hours", type=float, default=2000.0, help="mean time between failures of one "
                        "node (an assumption; the job's is this / nodes)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/scaling-<time>.json)")


def datasets(text: str) -> List[Dict]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, spec = item.rpartition("=")
        images, _, epochs = spec.partition("x")
        try:
            out.append({"dataset": name or spec, "images": int(images), "epochs": float(epochs)})
        except ValueError:
            raise UserError(f"--datasets: expected NAME=IMAGESxEPOCHS, got {item!r}") from None
    if not out:
        raise UserError("--datasets: nothing given")
    return out


def model_figures(name: str, mask_ratio: float, teacher: str) -> Dict[str, float]:
    """Parameters and training FLOPs per sample, counted on the meta device (no memory, no time)."""
    import torch

    from uniemox.models import create_pretrainer, get_arch
    from uniemox.models.flops import pretrainer_step_flops

    arch = get_arch(name)
    with torch.device("meta"):
        model = create_pretrainer(name, proj_dim=512, mask_ratio=mask_ratio)
    return {"params": sum(p.numel() for p in model.parameters()),
            "flops": pretrainer_step_flops(model, arch, teacher).per_sample}


def plan_row(data: Dict, model: str, figures: Dict[str, float], args: argparse.Namespace) -> Dict:
    samples = data["images"] * data["epochs"]
    per_gpu = args.mfu * args.peak_tflops * 1e12 / figures["flops"]  # images/s
    gpu_hours = samples / per_gpu / 3600
    nodes = max(1, math.ceil(gpu_hours / (args.target_hours * args.gpus_per_node)))
    hours = gpu_hours / (nodes * args.gpus_per_node)
    ckpt_bytes = figures["params"] * args.bytes_per_param
    save_s = ckpt_bytes / (nodes * args.write_mb_per_s * 1e6)
    job_mtbf_s = args.node_mtbf_hours * 3600 / nodes
    return dict(data, model=model, params_millions=figures["params"] / 1e6, gflops_per_sample=figures["flops"] / 1e9,
                gpu_hours=gpu_hours, nodes=nodes, hours=hours, images_per_s_per_gpu=per_gpu,
                loader_cores_per_gpu=per_gpu / args.loader_rate,
                read_mb_per_s_per_node=per_gpu * args.gpus_per_node * args.image_kb / 1e3,
                checkpoint_gib=ckpt_bytes / 2**30, save_s=save_s,
                checkpoint_every_min=math.sqrt(2 * save_s * job_mtbf_s) / 60,
                detection_core_hours=data["images"] * args.detect_core_s / 3600)


def run(args: argparse.Namespace) -> Dict:
    for flag in ("mask_ratio", "peak_tflops", "mfu", "target_hours", "loader_rate", "image_kb", "detect_core_s",
                 "bytes_per_param", "write_mb_per_s", "node_mtbf_hours"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive")
    if args.mfu > 1 or args.mask_ratio >= 1:
        raise UserError("--mfu must be at most 1 and --mask-ratio below 1")
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    figures = {m: model_figures(m, args.mask_ratio, args.teacher) for m in models}
    rows = [plan_row(d, m, figures[m], args) for d in datasets(args.datasets) for m in models]
    json_path, csv_path = results.results_paths("scaling", "paper", args.out)
    payload = {"benchmark": "scaling", "date": timing.utc_now(), "device": {"type": "paper", "name": "derived"},
               "versions": results.library_versions(),
               "run": {k: v for k, v in vars(args).items() if k not in ("func", "command")}, "rows": rows}
    results.write_results(json_path, csv_path, payload, COLUMNS)
    print(markdown(rows, args))
    print(f"[bench] results: {json_path}")
    return payload


def markdown(rows: List[Dict], args: argparse.Namespace) -> str:
    """The table of docs/scaling.md."""
    lines = [f"| data | model | GPU-hours | nodes x {args.gpus_per_node} GPUs | hours | img/s per GPU | loader cores "
             "per GPU | read MB/s per node | checkpoint | save | checkpoint every | detection |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = r["model"].replace("uniemox_vit_", "ViT-").replace("_patch", "/").replace("base", "B") \
            .replace("large", "L").replace("huge", "H")
        lines.append(f"| {r['dataset']} ({r['images']:,} x {r['epochs']:g} ep) | {size} | {r['gpu_hours']:,.0f} | "
                     f"{r['nodes']} | {r['hours']:.1f} | {r['images_per_s_per_gpu']:,.0f} | "
                     f"{r['loader_cores_per_gpu']:.1f} | {r['read_mb_per_s_per_node']:,.0f} | "
                     f"{r['checkpoint_gib']:.1f} GiB | {r['save_s']:.0f} s | {r['checkpoint_every_min']:.0f} min | "
                     f"{r['detection_core_hours']:.1f} core-h |")
    return "\n".join(lines)
