"""fp32 weights out of a DeepSpeed checkpoint, as safetensors plus a JSON config.

ZeRO stages 1-3 keep the fp32 master weights in optimizer partitions: DeepSpeed's
zero_to_fp32 reassembles them (also from ZeRO-3 shards). ZeRO-0 stores the module whole.
Writes ``pretrainer.safetensors`` (encoder, decoder, fusion, projection: everything to
continue or to score zero-shot), ``encoder.safetensors`` (timm/MAE key names, for
fine-tuning) and ``config.json``.
"""
import os
from typing import Dict

import torch

from uniemox.errors import UserError
from uniemox.io import atomic_save, atomic_write_json
from uniemox.safeload import DEEPSPEED_TYPES, check_checkpoint_dir, load_restricted

ENCODER_FORMAT = "uniemox-encoder-v1"


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


def encoder_state(pretrainer_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The encoder's tensors under their timm/MAE names (``model.`` prefix off, decoder out)."""
    out = {}
    for key, value in pretrainer_state.items():
        if key.startswith("model.") and not key.startswith(("model.decoder", "model.mask_token")):
            out[key[len("model."):]] = value
    return out


def export(tag_path: str, out_dir: str, config: dict) -> Dict[str, str]:
    from safetensors.torch import save_file

    state = fp32_state_from_checkpoint(tag_path)
    os.makedirs(out_dir, exist_ok=True)
    paths = {"pretrainer": os.path.join(out_dir, "pretrainer.safetensors"),
             "encoder": os.path.join(out_dir, "encoder.safetensors"),
             "config": os.path.join(out_dir, "config.json")}
    atomic_save(paths["pretrainer"], lambda tmp: save_file(state, tmp))
    atomic_save(paths["encoder"], lambda tmp: save_file(encoder_state(state), tmp))
    atomic_write_json(paths["config"], dict(config, format=ENCODER_FORMAT, source=os.path.abspath(tag_path)))
    return paths
