"""Resuming on another world size (more or fewer ranks, other nodes): the elastic resume.

* the optimizer: a ZeRO checkpoint's optimizer state and fp32 master weights are partitioned by
  the ranks that wrote it; DeepSpeed's own universal checkpoint (``ds_to_universal``, run once by
  rank 0 into ``checkpoints/universal/<tag>``, then ``checkpoint.load_universal``) reshards them
  for the new ranks. A ZeRO-0 checkpoint of a one-rank run (train.single_rank_stage0) holds
  them whole: DeepSpeed loads it at any world size, and the run stays at ZeRO-0.
* the ZeRO stage is the checkpoint's (a one-rank continuation of a ZeRO-2 run runs ZeRO-2);
* the global batch stays what it was (the learning rate, the schedule and the samples per step
  with it): ``optim.grad_accum`` becomes global batch / (micro batch x new world size); a global
  batch that does not divide is refused with the micro batches that would;
* the data: every old rank's loader state goes to every new rank, which takes its share of what
  the epochs under way had left (uniemox/data/elastic.py): each sample once per epoch.
"""
import glob
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional

from uniemox.errors import UserError
from uniemox.io import atomic_write_text

logger = logging.getLogger(__name__)

UNIVERSAL = "universal"  # the folder under checkpoints/ (checkpoint.py purges it)
DONE = "CONVERTED"  # written last into a universal checkpoint folder: the conversion finished


@dataclass
class ElasticResume:
    checkpoint: str             # the tag directory the run continues from
    saved_world: int
    stage: int                  # the checkpoint's ZeRO stage, kept
    grad_accum: int             # keeps the checkpoint's global batch
    universal: Optional[str]    # where the universal checkpoint goes (None: loaded as it is)

    @property
    def load_dir_and_tag(self):
        return os.path.split(self.universal or self.checkpoint)


def partitioned(tag_path: str) -> bool:
    """Does the checkpoint hold optimizer state split over its ranks (ZeRO-1/2/3, bf16 optimizer)?"""
    return bool(glob.glob(os.path.join(tag_path, "*optim_states.pt")))


def plan_elastic(tag_path: str, marker: Dict[str, Any], world: int, micro_batch: int) -> Optional[ElasticResume]:
    """None when the checkpoint was written by ``world`` ranks (the exact resume), else how the
    run continues on ``world`` ranks."""
    saved_world = marker["world_size"]
    if saved_world == world:
        return None
    saved = marker.get("config") or {}
    global_batch = saved["data"]["batch_size"] * saved["optim"]["grad_accum"] * saved_world
    if global_batch % (micro_batch * world):
        fits = [b for b in range(global_batch // world, 0, -1) if global_batch % (b * world) == 0]
        raise UserError(f"cannot resume {tag_path} (global batch {global_batch}, {saved_world} ranks) on {world} "
                        f"ranks with data.batch_size={micro_batch}: the global batch must stay; data.batch_size "
                        f"could be {', '.join(map(str, fits[:4])) or 'nothing (fewer ranks)'}")
    root, tag = os.path.split(tag_path.rstrip("/"))
    universal = os.path.join(root, UNIVERSAL, tag) if partitioned(tag_path) else None
    return ElasticResume(tag_path, saved_world, int(marker.get("zero_stage", 0)), global_batch // (micro_batch * world),
                         universal)


def convert_to_universal(plan: ElasticResume, rank: int) -> None:
    """Collective. Rank 0 runs DeepSpeed's ds_to_universal once (a finished conversion is kept
    for the next resume); the other ranks wait for it."""
    import torch.distributed as dist

    failure = None
    if rank == 0 and plan.universal and not os.path.isfile(os.path.join(plan.universal, DONE)):
        logger.info("converting %s (%d ranks, ZeRO-%d) to a universal checkpoint in %s", plan.checkpoint,
                    plan.saved_world, plan.stage, plan.universal)
        # DeepSpeed's converter; --inject_missing_state adds the universal_checkpoint_info that a
        # plain (non-Megatron) engine does not save
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", plan.checkpoint,
               "--output_folder", plan.universal, "--inject_missing_state"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            failure = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        else:
            atomic_write_text(os.path.join(plan.universal, DONE), plan.checkpoint)
    flag = [failure]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(flag, src=0)
    if flag[0]:
        raise UserError(f"DeepSpeed's ds_to_universal could not convert {plan.checkpoint}: {flag[0][0]}")
