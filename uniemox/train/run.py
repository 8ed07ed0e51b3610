"""What every training run does first: join the process group, create the run directory, size the
CPU threads, settle precision and seed. (The config of record is written once the run has
started or resumed: Trainer.resume.)"""
import os
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

from uniemox.claim import Claim, acquire
from uniemox.errors import UserError

from uniemox.errors import UserError

from .engine import configure_cpu_threads, init_distributed, resolve_precision
from .trackers import check_trackers

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Run(NamedTuple):
    rank: int
    world: int
    device: torch.device
    run_dir: str
    precision: str          # bf16 | fp16 | fp32, "auto" resolved for the device
    dtype: torch.dtype      # what inputs are cast to for the engine

    @property
    def pinned(self) -> bool:
        """Loaders pin their batches where a copy to the device can then overlap compute."""
        return self.device.type == "cuda"


def check_run_dir(path: str) -> None:
    """A run directory is a folder, or can become one: a regular file in its place (or in the place
    of a folder above it) is refused in one line, on every rank, before anything starts."""
    here = os.path.abspath(path)
    while not os.path.exists(here) and os.path.dirname(here) != here:
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        what = "is a file" if here == os.path.abspath(path) else f"is inside {here}, which is a file"
        raise UserError(f"run directory {path} {what}, not a folder: choose another --run-dir / log.run_dir")


def start_run(cfg) -> Run:
    """``cfg`` needs ``log.run_dir``, ``log.report_to``, ``data.num_workers``, ``train.precision`` and
    ``train.seed``."""
    check_trackers(cfg.log.report_to)  # a missing tracker library stops every rank before anything starts
    check_run_dir(cfg.log.run_dir)
    dist_info = init_distributed()
    rank, world, device = dist_info.rank, dist_info.world_size, dist_info.device
    if rank == 0:
        os.makedirs(cfg.log.run_dir, exist_ok=True)
    configure_cpu_threads(device, cfg.data.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    precision = resolve_precision(cfg.train.precision, device)
    torch.manual_seed(cfg.train.seed)
    torch.set_flush_denormal(True)  # x86 CPUs compute denormals slowly; training never needs them
    return Run(rank, world, device, cfg.log.run_dir, precision, DTYPES[precision])


def hold_run_dir(run: Run) -> Optional[Claim]:
    """Collective: rank 0 claims the run dir for the run's life (uniemox.claim; the other ranks
    belong to its holder); a refusal ends every rank with rank 0's line."""
    claim, refusal = None, [None]
    if run.rank == 0:
        try:
            claim = acquire(run.run_dir, "training run")
        except UserError as err:
            refusal[0] = str(err)
    if run.world > 1:
        dist.broadcast_object_list(refusal, src=0)
    if refusal[0]:
        raise UserError(refusal[0])
    return claim
