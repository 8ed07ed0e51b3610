"""``launch/benchmark.py loader``: the data loader's own ceiling, no model.

Decoded two-view samples/s (JPEG decode, person crop, both views' augmentation, prompt,
collation) from real shards through the pretraining reader with N workers, for each N of
``--workers`` (the reader resampled, so any number of shards works). Compare with the step
benchmark's samples/s of ``ours`` on the GPU: where the loader's figure is lower, the data
cannot keep up and the trainer needs more workers (or cores, or smaller stored images).

Each worker count starts a fresh loader; the first ``warmup + workers`` batches (worker
start-up, and the one batch each worker readies first) are not timed. The DataLoader keeps up
to 2 batches per worker queued, so time at least several times ``2 x workers`` batches.
"""
import argparse
import os
import platform
import time
from typing import Dict, List

from uniemox.errors import UserError

from . import plot, results, timing
from .data import resolve_shards

COLUMNS = ("workers", "batch", "image_size", "batches", "samples_per_s", "ms_per_batch", "shards", "skipped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", default=None, help="shard files (brace pattern, '::'-separated) or a shard "
                                                       "folder with a manifest (its train split); default: "
                                                       "the embedded SYNTHETIC sample set (small images)")
    parser.add_argument("--workers", default="0,2,4,8", help="comma-separated worker counts")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=50, help="timed batches per worker count")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches (plus one per worker)")
    parser.add_argument("--out", default=None, help="results JSON (CSV and PNG beside it; default "
                                                    "benchmarks/results/loader-<host>-<utc time>.json)")


def measure(urls: List[str], workers: int, batch: int, image_size: int, batches: int, warmup: int) -> Dict:
    """One worker count: ``batches`` timed batches of the pretraining reader after ``warmup +
    workers`` untimed ones (worker start-up excluded)."""
    from uniemox.data import build_pretrain_loader

    untimed = warmup + workers
    loader = build_pretrain_loader(urls, batch, workers, image_size, shuffle_buffer=100, resampled=True,
                                   epoch_batches=untimed + batches)
    it = iter(loader)
    for _ in range(untimed):
        next(it)
    samples, start = 0, time.perf_counter()
    for _ in range(batches):
        samples += next(it)["scene"].shape[0]
    seconds = time.perf_counter() - start
    return {"workers": workers, "batch": batch, "image_size": image_size, "batches": batches,
            "samples_per_s": samples / seconds, "ms_per_batch": 1e3 * seconds / batches,
            "shards": len(urls), "skipped": loader.skipped}


def run(args: argparse.Namespace) -> Dict:
    try:
        workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    except ValueError:
        raise UserError(f"--workers: expected comma-separated integers, got {args.workers!r}") from None
    if not workers or min(workers) < 0:
        raise UserError("--workers: one or more counts >= 0")
    for flag, value in (("--batch", args.batch), ("--image-size", args.image_size), ("--batches", args.batches)):
        if value < 1:
            raise UserError(f"{flag} must be positive")
    if args.warmup < 0:
        raise UserError("--warmup must not be negative")
    urls = resolve_shards(args.shards)
    host = {"name": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    json_path, csv_path = results.results_paths("loader", host["name"], args.out)
    payload = {"benchmark": "loader", "date": timing.utc_now(), "device": {"type": "host", "name": host["name"]},
               "host": host, "versions": results.library_versions(),
               "run": {k: v for k, v in vars(args).items() if k not in ("func", "command")},
               "data": "default embedded SYNTHETIC sample set" if not args.shards else str(args.shards),
               "rows": []}
    print(f"[bench] loader: {len(urls)} shard(s), batch {args.batch}, image {args.image_size}, "
          f"{host['usable_cpus']} usable CPU(s)")
    print(f"  {'workers':>8}{'samples/s':>12}{'ms/batch':>10}")
    for w in workers:
        row = measure(urls, w, args.batch, args.image_size, args.batches, args.warmup)
        payload["rows"].append(row)
        results.write_results(json_path, csv_path, payload, COLUMNS)
        print(f"  {w:>8}{row['samples_per_s']:>12.1f}{row['ms_per_batch']:>10.1f}")
    payload["plot"] = str(plot.plot_loader(payload, json_path.with_suffix(".png")))
    results.write_results(json_path, csv_path, payload, COLUMNS)
    print(f"[bench] results: {json_path}")
    return payload
