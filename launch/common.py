"""What the training entry points (pretrain, finetune, train_teacher) share: their common flags,
and how a run stopped by too many non-finite steps ends."""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_parser(prog: str, doc: str, epilog: str, run_dir_help: str,
               config_help: str = "run config YAML (defaults < this file < overrides)") -> argparse.ArgumentParser:
    """A parser with --deepspeed, --config, --resume, --run-dir, the launcher's --local_rank and
    the positional section.key=value overrides; each entry point adds its own flags."""
    p = argparse.ArgumentParser(prog=prog, description=doc, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deepspeed", dest="ds_config", default=str(REPO / "configs" / "zero2.json"),
                   help="DeepSpeed JSON (configs/zero{0,1,2,3}.json, zero2_offload.json); default: zero2")
    p.add_argument("--config", help=config_help)
    p.add_argument("--resume", help="'auto' (newest complete checkpoint of the run dir) or a checkpoint dir")
    p.add_argument("--run-dir", help=run_dir_help)
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the launcher
    p.add_argument("overrides", nargs="*", help="section.key=value")
    return p


def flag_overrides(args, pairs) -> list:
    """The overrides plus ``key=value`` for each (flag value, config key) pair that was given."""
    return list(args.overrides) + [f"{key}={value}" for value, key in pairs if value is not None]


def exit_halted(halt: Exception, bar, writer, rank: int) -> None:
    """Too many non-finite steps in a row: close the progress bar and logs, say why, exit 3."""
    if bar is not None:
        bar.close()
    writer.close()
    if rank == 0:
        print(f"error: {halt}", file=sys.stderr)
    sys.exit(3)
