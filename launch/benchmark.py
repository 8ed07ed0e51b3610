"""Benchmarks of UniEmoX, one subcommand each; the logic lives in uniemox.bench.

    python launch/benchmark.py kernels                 # fused kernels vs references (GPU)
    python launch/benchmark.py kernels --device cpu --interpret --batch 2 --image-size 32 \
        --embed-dim 32 --decoder-dim 32 --distill-dim 32 --reps 2   # output-format smoke run

Each run writes one JSON results file (benchmarks/results/ unless --out) and prints a table.
Bad input ends with one line on stderr and exit code 2.
"""
import argparse
import sys
from typing import Optional, Sequence

from uniemox.bench import kernels as bench_kernels
from uniemox.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    kernels = sub.add_parser("kernels", help="time each fused Triton kernel against its PyTorch "
                                             "reference (forward + backward)")
    bench_kernels.add_arguments(kernels)
    kernels.set_defaults(func=bench_kernels.run)
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
