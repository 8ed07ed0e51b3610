"""fp32 weights out of a DeepSpeed checkpoint, what every export is made from.

ZeRO stages 1-3 keep the fp32 master weights in optimizer partitions: DeepSpeed's
zero_to_fp32 reassembles them (also from ZeRO-3 shards). ZeRO-0 stores the module whole.
The files an export holds are written by ``uniemox.exports``.
"""
import os
from typing import Dict

import torch

from uniemox.errors import UserError
from uniemox.safeload import DEEPSPEED_TYPES, check_checkpoint_dir, load_restricted


def fp32_state_from_checkpoint(tag_path: str) -> Dict[str, torch.Tensor]:
    root, tag = os.path.split(tag_path.rstrip("/"))
    if not os.path.isdir(tag_path):
        raise UserError(f"checkpoint directory not found: {tag_path}")
    check_checkpoint_dir(tag_path)  # no file runs code: zero_to_fp32 unpickles without restriction
    optim_files = [f for f in os.listdir(tag_path) if f.endswith("optim_states.pt")]
    if optim_files:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
    else:  # ZeRO-0: our own checkpoint, written by DeepSpeed's torch.save of the module
        path = os.path.join(tag_path, "mp_rank_00_model_states.pt")
        state = load_restricted(path, DEEPSPEED_TYPES)["module"]
    return {k: v.detach().float().contiguous() for k, v in state.items()}
