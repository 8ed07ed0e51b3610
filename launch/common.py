"""What the training entry points (pretrain, finetune, train_teacher) share: their common flags,
the one config precedence rule, and how a run ends (exit 0; 2 for bad input or a run directory
that refuses writes or is held by another run, one line; 3 when too many non-finite steps
stopped it; 4 when SIGTERM or SIGUSR1 stopped it with a checkpoint: requeue it with --resume auto)."""
import argparse
import contextlib
import errno
import logging
import sys
from typing import Iterator, Sequence, Tuple

from uniemox.config import PRECEDENCE, deepspeed_config, resolve_config
from uniemox.errors import UserError


def run_parser(prog: str, doc: str, run_dir_help: str, config_section: str) -> argparse.ArgumentParser:
    """A parser with --deepspeed, --config, --resume, --run-dir, the launcher's --local_rank and
    the section.key=value overrides (before or after the flags); each entry point adds its own."""
    p = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Config: {PRECEDENCE}. Every section and key, with defaults and allowed values: "
               f"uniemox/config/{config_section}.py and uniemox/config/sections.py; recipes: configs/*.yaml.")
    p.add_argument("--deepspeed", dest="ds_config", default=None,
                   help="DeepSpeed JSON: a file, or a shipped one by name (zero0, zero1, zero2, zero3, "
                        "zero2_offload); default: the shipped zero2.json")
    p.add_argument("--config", help="run config YAML (over the recipe, under the overrides)")
    p.add_argument("--resume", help="'auto' (newest complete checkpoint of the run dir) or a checkpoint dir")
    p.add_argument("--run-dir", help=run_dir_help)
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the launcher
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return p


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Overrides may stand before and after the flags, in every entry point."""
    return parser.parse_intermixed_args(argv)


def build_config(cls, task, args, flags: Sequence[Tuple[str, str]] = ()):
    """The run config of ``task`` by the one precedence rule: ``flags`` are (attribute of args,
    config key) pairs, applied as overrides when given (--run-dir, --resume, ...)."""
    pairs = [("resume", "checkpoint.resume"), ("run_dir", "log.run_dir")] + list(flags)
    overrides = list(args.overrides) + [f"{key}={getattr(args, attr)}" for attr, key in pairs
                                        if getattr(args, attr) is not None]
    return resolve_config(cls, args.config, overrides, task.recipes)


def train(cfg, task, args, **task_kwargs) -> None:
    """Trainer(cfg, task).fit() with the chosen DeepSpeed JSON."""
    from uniemox.train.trainer import Trainer

    factory = (lambda c, r: task(c, r, **task_kwargs)) if task_kwargs else task
    Trainer(cfg, factory, deepspeed_config(args.ds_config)).fit()


@contextlib.contextmanager
def entry_point(progress_log: bool = True) -> Iterator[None]:
    """Logging as the entry points want it (``progress_log``: the project's INFO lines, as a
    training run has them); bad input is one line and exit code 2, a run stopped by non-finite
    steps one line and exit code 3, a run preempted by a signal one line and exit code 4 (on rank 0;
    every rank exits)."""
    from uniemox.train.guard import NonFiniteHalt
    from uniemox.train.preemption import EXIT_CODE, Preempted

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if progress_log:
        logging.getLogger("uniemox").setLevel(logging.INFO)  # ours at INFO; libraries' INFO chatter off
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except NonFiniteHalt as halt:
        if _rank() == 0:
            print(f"error: {halt}", file=sys.stderr)
        sys.exit(3)
    except Preempted as stop:
        if _rank() == 0:
            print(f"preempted: {stop}", file=sys.stderr)
        sys.exit(EXIT_CODE)
    except OSError as exc:  # the run directory or disk refuses a write: the user's to fix
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        print(f"error: cannot write {exc.filename or 'a file'}: {exc.strerror}", file=sys.stderr)
        sys.exit(UserError.exit_code)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
