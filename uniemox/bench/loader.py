"""``launch/benchmark.py loader``: the data loader's own ceiling, no model, against a plain pipeline.

Decoded two-view samples/s (JPEG decode, person crop, both views' augmentation, prompt,
collation) from real shards through the pretraining reader (``ours``) and through the plain
webdataset + torchvision pipeline a user would write (``plain``, plain_loader.py), side by side
in one run, for each worker count of ``--workers`` (both resampled, so any number of shards
works). The headline is the ratio of the medians, per worker count; per core is samples/s over
``max(1, workers)`` (0 workers: the reader runs in the main process, on one core).

Per worker count, both loaders are started and warmed up (the first ``warmup + workers``
batches: worker start-up, and the one batch each worker readies first, are not timed), then
timed in interleaved slots of ``--batches`` batches, A B B A (``--rounds`` 2; timing.interleave,
as ``benchmark.py step`` does), so that a drift of the machine (another process, the cache)
falls on both alike: on a shared machine the absolute rates move, their ratio much less. Each
variant's samples/s is the median over its slots, with the min and the max. With workers, the
loader not being timed keeps at most 2 batches per worker queued: it refills them during the
other's slot, so a slot should be several times ``2 x workers`` batches long.

Beside the wall clock, each variant's CPU seconds are counted (psutil: the main process during
its slots, its worker processes over the whole timed run, once they have refilled their queues):
samples per CPU-second is the rate of one core that nobody else uses, the figure that holds on a
shared machine, where the wall time also holds waits for cores that other processes have taken.

The main process runs with ``--threads`` torch threads (default 1: the reader in-process beside a
trainer gets one core); DataLoader workers always run with one.
"""
import argparse
import os
import platform
import statistics
import time
from typing import Dict, List, Optional

from uniemox.errors import UserError

from . import plot, results, timing
from .data import resolve_shards
from .plain_loader import PLAIN

VARIANTS = ("ours", "plain")
COLUMNS = ("workers", "cores", "variant", "decode", "batch", "image_size", "batches", "slots", "threads",
           "samples_per_s", "samples_per_s_min", "samples_per_s_max", "samples_per_s_per_core", "samples_per_cpu_s",
           "ms_per_batch", "ratio_vs_plain", "cpu_ratio_vs_plain", "shards", "skipped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", default=None, help="shard files (brace pattern, '::'-separated) or a shard "
                                                       "folder with a manifest (its train split); default: "
                                                       "the embedded SYNTHETIC sample set (small images)")
    parser.add_argument("--workers", default="0,2,4,8", help="comma-separated worker counts")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=50, help="timed batches per slot")
    parser.add_argument("--rounds", type=int, default=2, help="timed slots per variant, interleaved: A B B A "
                                                              "(2), A B B A A B (3), ...")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches (plus one per worker)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--decode-device", default=None, choices=("cpu", "cuda"),
                        help="ours decodes each batch and cuts its views on this device in the main process "
                             "(cuda: nvJPEG), the workers only draw the crops; default: in the workers")
    parser.add_argument("--out", default=None, help="results JSON (CSV and PNG beside it; default "
                                                    "benchmarks/results/loader-<host>-<utc time>.json)")


def measure(urls: List[str], workers: int, batch: int, image_size: int, batches: int, warmup: int,
            rounds: int = 2, decode_device: Optional[str] = None) -> List[Dict]:
    """One worker count: a row per variant (ours first), each from its ``rounds`` interleaved slots
    of ``batches`` batches, after ``warmup + workers`` untimed ones. Both read the same shards
    through a shuffle buffer of the same size."""
    import torch

    from uniemox.data import build_pretrain_loader

    from .plain_loader import plain_batches

    reader = build_pretrain_loader(urls, batch, workers, image_size, shuffle_buffer=100, resampled=True,
                                   decode_device=decode_device)
    # views made on the GPU are waited for at the end of each slot
    sync = torch.cuda.synchronize if decode_device == "cuda" else (lambda: None)
    start_variant = {"ours": lambda: iter(reader),
                     "plain": lambda: plain_batches(urls, batch, workers, image_size, shuffle_buffer=100)}
    clock, its = CpuClock(), {}
    for variant in VARIANTS:  # one after the other: each variant's worker processes are told apart
        its[variant] = start_variant[variant]()
        for _ in range(warmup + workers):
            next(its[variant])
        clock.adopt_children(variant)
    slot_s: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    samples: Dict[str, int] = {}
    main_cpu_s = {v: 0.0 for v in VARIANTS}
    workers_cpu_s = {v: -clock.children_s(v) for v in VARIANTS}
    for variant in timing.interleave(VARIANTS, rounds):
        start, cpu_start, n = time.perf_counter(), clock.main_s(), 0
        for _ in range(batches):
            n += next(its[variant])["scene"].shape[0]
        sync()
        slot_s[variant].append(time.perf_counter() - start)
        main_cpu_s[variant] += clock.main_s() - cpu_start
        samples[variant] = n  # the same in every slot: full batches
    for variant in VARIANTS:
        workers_cpu_s[variant] += clock.children_s(variant, settle=True)
    skipped = reader.skipped
    del its, reader  # their DataLoaders end their worker processes before the next worker count starts
    rows = []
    for variant in VARIANTS:
        rates = [samples[variant] / s for s in slot_s[variant]]
        median_s = statistics.median(slot_s[variant])
        cpu_s = main_cpu_s[variant] + workers_cpu_s[variant]
        rows.append({"workers": workers, "cores": max(1, workers), "variant": variant, "batch": batch,
                     "image_size": image_size, "batches": batches, "slots": len(rates),
                     "samples_per_s": samples[variant] / median_s, "samples_per_s_min": min(rates),
                     "samples_per_s_max": max(rates),
                     "samples_per_s_per_core": samples[variant] / median_s / max(1, workers),
                     "samples_per_cpu_s": samples[variant] * len(rates) / cpu_s if cpu_s > 0 else None,
                     "ms_per_batch": 1e3 * median_s / batches, "shards": len(urls),
                     "skipped": skipped if variant == "ours" else None})
    plain = rows[-1]
    for row in rows:
        row["ratio_vs_plain"] = plain["ms_per_batch"] / row["ms_per_batch"]  # the ratio of the median slots
        row["cpu_ratio_vs_plain"] = (row["samples_per_cpu_s"] / plain["samples_per_cpu_s"]
                                     if row["samples_per_cpu_s"] and plain["samples_per_cpu_s"] else None)
    return rows


class CpuClock:
    """CPU seconds (user + system) of this process, and of the worker processes each variant
    started: what the variants cost on a shared machine, where their wall time also holds the
    waits for cores that other processes hold."""

    def __init__(self):
        import psutil

        self.me, self.pids = psutil.Process(), {}
        self.known = {p.pid for p in self.me.children(recursive=True)}

    def adopt_children(self, variant: str) -> None:
        now = {p.pid for p in self.me.children(recursive=True)}
        self.pids[variant], self.known = now - self.known, now

    def main_s(self) -> float:
        t = self.me.cpu_times()
        return t.user + t.system

    def children_s(self, variant: str, settle: bool = False) -> float:
        """The variant's workers' CPU seconds so far; ``settle``: once they have stopped working
        (their queues full again), up to 10 s, so that what they made ahead is counted too."""
        import psutil

        def total() -> float:
            out = 0.0
            for pid in self.pids.get(variant, ()):
                try:
                    t = psutil.Process(pid).cpu_times()
                    out += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            return out

        last = total()
        for _ in range(50 if settle and self.pids.get(variant) else 0):
            time.sleep(0.2)
            now = total()
            if now - last < 0.005:
                break
            last = now
        return last


def run(args: argparse.Namespace) -> Dict:
    import torch

    try:
        workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    except ValueError:
        raise UserError(f"--workers: expected comma-separated integers, got {args.workers!r}") from None
    if not workers or min(workers) < 0:
        raise UserError("--workers: one or more counts >= 0")
    for flag, value in (("--batch", args.batch), ("--image-size", args.image_size), ("--batches", args.batches),
                        ("--rounds", args.rounds), ("--threads", args.threads)):
        if value < 1:
            raise UserError(f"{flag} must be positive")
    if args.warmup < 0:
        raise UserError("--warmup must not be negative")
    urls = resolve_shards(args.shards)
    torch.set_num_threads(args.threads)
    host = {"name": platform.processor() or platform.machine(), "model": _cpu_model(), "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_average_at_start": _load_average()}  # how busy the machine was: a shared one moves wall rates
    json_path, csv_path = results.results_paths("loader", host["name"], args.out)
    payload = {"benchmark": "loader", "date": timing.utc_now(), "device": {"type": "host", "name": host["name"]},
               "host": host, "versions": results.library_versions(),
               "run": {k: v for k, v in vars(args).items() if k not in ("func", "command")},
               "data": "default embedded SYNTHETIC sample set" if not args.shards else str(args.shards),
               "variants": {"ours": "the pretraining reader (uniemox.data.build_pretrain_loader)" + (
                                f", batches decoded and cut on {args.decode_device}" if args.decode_device else ""),
                            "plain": PLAIN},
               "timing": f"interleaved slots {' '.join(timing.interleave(('A', 'B'), args.rounds))} of "
                         f"{args.batches} batches (A = ours, B = plain); median, min, max over a variant's slots; "
                         f"ratio = plain's median slot time / ours'; per core = samples/s / max(1, workers)",
               "rows": []}
    print(f"[bench] loader: {len(urls)} shard(s), batch {args.batch}, image {args.image_size}, "
          f"{host['usable_cpus']} usable CPU(s), {args.threads} torch thread(s), ours vs plain interleaved")
    print(f"  {'workers':>8}{'variant':>8}{'samples/s':>11}{'min':>8}{'max':>8}{'per core':>10}{'x plain':>9}"
          f"{'per CPU-s':>11}{'x plain':>9}")
    for w in workers:
        rows = [dict(row, threads=args.threads, decode=args.decode_device or "workers")
                for row in measure(urls, w, args.batch, args.image_size, args.batches, args.warmup, args.rounds,
                                   args.decode_device)]
        payload["rows"] += rows
        results.write_results(json_path, csv_path, payload, COLUMNS)
        for r in rows:
            print(f"  {w:>8}{r['variant']:>8}{r['samples_per_s']:>11.1f}{r['samples_per_s_min']:>8.1f}"
                  f"{r['samples_per_s_max']:>8.1f}{r['samples_per_s_per_core']:>10.1f}{r['ratio_vs_plain']:>8.2f}x"
                  f"{r['samples_per_cpu_s'] or 0:>11.1f}{r['cpu_ratio_vs_plain'] or 0:>8.2f}x")
    payload["host"]["load_average_at_end"] = _load_average()
    payload["plot"] = str(plot.plot_loader(payload, json_path.with_suffix(".png")))
    results.write_results(json_path, csv_path, payload, COLUMNS)
    print(f"[bench] results: {json_path}")
    return payload


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:  # not Linux
        return None


def _load_average() -> Optional[List[float]]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
