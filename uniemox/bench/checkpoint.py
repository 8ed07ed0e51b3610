"""``launch/benchmark.py checkpoint``: what a checkpoint costs: its bytes and the seconds to write
it, for a model and ZeRO stage, measured by saving the real thing (the trainer's Checkpointer on
a DeepSpeed engine of the pretrainer, optimizer state included, after one step) into ``--dir``
(put it on the file system the runs will write to). Also the file system's sequential write
bandwidth (a file of the same size written and fsynced), to carry the figure to other sizes."""
import argparse
import os
import shutil
import tempfile
import time
from typing import Dict

import torch

from uniemox.errors import UserError

from . import results, timing
from .sweep import arch_overrides

COLUMNS = ("model", "params_millions", "zero", "precision", "checkpoint_bytes", "bytes_per_param", "save_s",
           "disk_write_mb_per_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="uniemox_vit_base_patch16", help="pretrainer architecture "
                        "(uniemox_vit_{tiny,small,base,large,huge}_patch*)")
    parser.add_argument("--arch", default="", help="architecture overrides, e.g. img_size=64,depth=2")
    parser.add_argument("--zero", type=int, choices=(1, 2, 3), default=2, help="ZeRO stage of the engine")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16", help="bf16 keeps fp32 master "
                        "weights beside the bf16 ones (14 B/param with Adam), fp32 does not (16 B/param)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=2, help="saves timed (the fastest is reported)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/checkpoint-<time>.json)")


def _disk_write(folder: str, nbytes: int) -> float:
    """MB/s of one sequential write of ``nbytes`` with fsync (the last step of any checkpoint)."""
    path = os.path.join(folder, "disk-probe.bin")
    block = os.urandom(1 << 24)
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(max(1, nbytes // len(block))):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    written = os.path.getsize(path)
    os.remove(path)
    return written / seconds / 1e6


def measure(args: argparse.Namespace, folder: str) -> Dict:
    from uniemox.config import deepspeed_config
    from uniemox.models import create_pretrainer, get_arch
    from uniemox.train.checkpoint import Checkpointer
    from uniemox.train.engine import build_ds_config, build_engine, build_optimizer, init_distributed
    from uniemox.train.param_groups import decay_groups
    from uniemox.train.step import guarded_micro_step

    info = init_distributed()
    overrides = arch_overrides(args.arch)
    size = get_arch(args.model, **overrides).img_size
    # every trained parameter (fusion, distillation projection) is in the checkpoint; the step
    # only needs a loss through most of them for the optimizer state to exist
    model = create_pretrainer(args.model, proj_dim=512, losses="reconstruction", kernel_impl="torch",
                              **overrides).to(info.device)
    params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them
    ds = build_ds_config(deepspeed_config(f"zero{args.zero}"), micro_batch=1, grad_accum=1, world_size=info.world_size,
                         grad_clip=0.0, precision=args.precision)
    optimizer = build_optimizer(decay_groups(model, 0.05), 1e-4, (0.9, 0.95), ds, info.device)
    engine, _ = build_engine(model, optimizer, ds)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    images = torch.randn(1, 3, size, size, dtype=dtype, device=info.device)
    one, zero = torch.ones((), device=info.device), torch.zeros((), device=info.device)

    def forward():
        loss = engine(images)["loss"]
        return loss, {"loss": loss}
    guarded_micro_step(engine, forward, one, zero)  # the trainer's step, once: the optimizer state exists
    checkpointer = Checkpointer(folder, keep=1, rank=info.rank, world_size=info.world_size)
    times = []
    for i in range(args.repeats):
        start = time.perf_counter()
        path = checkpointer.save(engine, i + 1, {}, {})
        times.append(time.perf_counter() - start)
    nbytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return dict(model=args.model, params_millions=params / 1e6, zero=args.zero, precision=args.precision,
                checkpoint_bytes=nbytes, bytes_per_param=nbytes / params, save_s=min(times),
                disk_write_mb_per_s=_disk_write(folder, nbytes))


def run(args: argparse.Namespace) -> Dict:
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    folder = args.dir or tempfile.mkdtemp(prefix="uniemox-checkpoint-")
    os.makedirs(folder, exist_ok=True)
    json_path, csv_path = results.results_paths("checkpoint", "host", args.out)
    try:
        row = measure(args, folder)
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    payload = {"benchmark": "checkpoint", "date": timing.utc_now(), "device": {"type": "host", "name": "host"},
               "versions": results.library_versions(), "run": {k: v for k, v in vars(args).items()
                                                                if k not in ("func", "command")}, "rows": [row]}
    results.write_results(json_path, csv_path, payload, COLUMNS)
    print(f"  {row['model']}: {row['checkpoint_bytes'] / 2**30:.2f} GiB ({row['bytes_per_param']:.1f} B/param, "
          f"ZeRO-{row['zero']}, {row['precision']}), saved in {row['save_s']:.1f} s; the disk writes "
          f"{row['disk_write_mb_per_s']:.0f} MB/s\n[bench] results: {json_path}")
    return payload
