"""Run configs: typed sections, the one precedence rule, the shipped recipes and DeepSpeed JSON.
Task configs live in their own modules (pretrain, clip_teacher, classify)."""
from .core import (PRECEDENCE, apply_overrides, bounded, choice, from_dict, load_config, merge_dicts, read_yaml,
                   resolve_config, save_config, to_dict)
from .files import deepspeed_config, recipe

__all__ = ["PRECEDENCE", "apply_overrides", "bounded", "choice", "from_dict", "load_config", "merge_dicts",
           "read_yaml", "resolve_config", "save_config", "to_dict", "deepspeed_config", "recipe"]
