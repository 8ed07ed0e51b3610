"""Every shipped config loads: run YAMLs into their dataclass, DeepSpeed JSONs into the engine config."""
import glob
import os

import pytest

from uniemox.config import load_config
from uniemox.errors import UserError
from uniemox.train.engine import build_ds_config, offloads_optimizer, zero_stage
from uniemox.train.pretrain_config import SAMPLE_PRESET, PretrainConfig

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "pretrain_*.yaml"))))
def test_pretrain_yaml_loads(path):
    cfg = load_config(PretrainConfig, path)
    assert cfg.data.shards, "a run config names its data"


def test_sample_preset_is_a_valid_config():
    cfg = load_config(PretrainConfig, None, base=SAMPLE_PRESET)
    assert cfg.model.name == "uniemox_vit_tiny_patch16" and cfg.optim.max_steps > 0


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_configs_fill_from_the_run_config(stage):
    ds = build_ds_config(os.path.join(CONFIGS, f"zero{stage}.json"), micro_batch=16, grad_accum=2, world_size=4,
                         grad_clip=1.0, precision="bf16")
    assert zero_stage(ds) == stage
    assert ds["train_batch_size"] == 128 and ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False and ds["gradient_clipping"] == 1.0


def test_offload_config():
    ds = build_ds_config(os.path.join(CONFIGS, "zero2_offload.json"), micro_batch=8, grad_accum=1, world_size=1,
                         grad_clip=0.0, precision="fp32")
    assert offloads_optimizer(ds) and zero_stage(ds) == 2


def test_contradicting_json_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"train_micro_batch_size_per_gpu": 32, "zero_optimization": {"stage": 2}}')
    with pytest.raises(UserError, match="train_micro_batch_size_per_gpu=32 but the run config gives 16"):
        build_ds_config(str(path), micro_batch=16, grad_accum=1, world_size=1, grad_clip=0.0, precision="fp32")
    path.write_text('{"optimizer": {"type": "Adam"}}')
    with pytest.raises(UserError, match="names a .optimizer."):
        build_ds_config(str(path), micro_batch=16, grad_accum=1, world_size=1, grad_clip=0.0, precision="fp32")
