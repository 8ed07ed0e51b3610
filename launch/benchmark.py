"""Benchmarks of UniEmoX, one subcommand each; the logic lives in uniemox.bench.

    python launch/benchmark.py kernels                 # fused kernels vs references (GPU)
    python launch/benchmark.py kernels --device cpu --interpret --batch 2 --image-size 32 \
        --embed-dim 32 --decoder-dim 32 --distill-dim 32 --reps 2   # output-format smoke run

    python launch/benchmark.py step                    # ViT-B/16 step: ours vs the plain reference
    python launch/benchmark.py step --preset gpu       # the committed GPU sweep (B/16, L/16 x mask 0.75, 0.9)
    python launch/benchmark.py step --data shards --shards 'data/train-{000000..000099}.tar' --workers 8
    python launch/benchmark.py step --device cpu --model uniemox_vit_tiny_patch16 --teacher uniemox-clip-tiny \
        --arch img_size=64,depth=2,decoder_depth=1 --batch 4 --zero 0 --warmup 1 --steps 3   # CPU smoke run
    python launch/benchmark.py loader --shards DIR --workers 0,4,8,16      # the loader's own ceiling
    python launch/benchmark.py memory --gpu-gib 80      # activations per sample, +/- checkpointing
    python launch/benchmark.py checkpoint --model uniemox_vit_large_patch16 --dir /mnt/ckpt   # bytes, seconds
    python launch/benchmark.py scaling --mfu 0.3 --target-hours 24   # a run's needs on paper (docs/scaling.md)

Each run writes its results (benchmarks/results/ unless --out: JSON; step and loader also CSV
and PNG) and prints a table.
Bad input ends with one line on stderr and exit code 2.
"""
import argparse
import sys
from typing import Optional, Sequence

from uniemox.bench import checkpoint as bench_checkpoint
from uniemox.bench import kernels as bench_kernels
from uniemox.bench import loader as bench_loader
from uniemox.bench import memory as bench_memory
from uniemox.bench import scaling as bench_scaling
from uniemox.bench import step as bench_step
from uniemox.errors import UserError


# subcommand, its module in uniemox.bench (add_arguments, run), and its --help line
SUBCOMMANDS = (
    ("kernels", bench_kernels, "time each fused Triton kernel against its PyTorch reference (forward + backward)"),
    ("step", bench_step, "the UniEmoX training step (ours) against the plain reference, side by side: "
                         "samples/s, MFU, memory, data share; sweeps"),
    ("loader", bench_loader, "the data loader's own ceiling: decoded two-view samples/s from shards with N "
                             "workers, no model, against a plain webdataset + torchvision pipeline"),
    ("memory", bench_memory, "activation memory of the pretraining step per sample, with and without activation "
                             "checkpointing; the largest micro batch per GPU"),
    ("checkpoint", bench_checkpoint, "what one training checkpoint costs: bytes on disk and seconds to save "
                                     "(DeepSpeed engine, optimizer state), disk bandwidth"),
    ("scaling", bench_scaling, "what pretraining needs (nodes, loader cores, storage bandwidth, checkpoint "
                               "interval, hours), derived from the measurements"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, help_line in SUBCOMMANDS:
        command = sub.add_parser(name, help=help_line)
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"benchmark.py {args.command}: {err}", file=sys.stderr)
        return UserError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
