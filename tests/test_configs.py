"""Every shipped config loads: run recipes into their task's dataclass, DeepSpeed JSONs into the
engine config; the shipped files are found from any working directory."""
import glob
import os

import pytest

from uniemox.config import deepspeed_config, load_config, recipe, resolve_config
from uniemox.config.classify import FinetuneConfig
from uniemox.config.clip_teacher import TeacherTrainConfig
from uniemox.config.pretrain import PretrainConfig
from uniemox.errors import UserError
from uniemox.tasks.classify import ClassifyTask
from uniemox.tasks.clip_teacher import TeacherTask
from uniemox.tasks.pretrain import PretrainTask
from uniemox.train.engine import build_ds_config, offloads_optimizer, zero_stage

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
RECIPE_CLASS = {"pretrain": PretrainConfig, "teacher": TeacherTrainConfig, "finetune": FinetuneConfig,
                "linear": FinetuneConfig, "probe": FinetuneConfig}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.yaml"))))
def test_every_shipped_recipe_loads_into_its_config(path):
    name = os.path.basename(path)
    cfg = load_config(RECIPE_CLASS[name.split("_")[0]], path)
    if name == "pretrain_emoset_vitl.yaml":
        assert cfg.data.shards, "a run config names its data"


def test_sample_recipe_is_the_pretraining_default_without_data():
    cfg = resolve_config(PretrainConfig, recipes=PretrainTask.recipes)
    assert cfg.model.name == "uniemox_vit_tiny_patch16" and cfg.optim.max_steps == 300
    cfg = resolve_config(PretrainConfig, overrides=["data.shards=/d/x-{0..3}.tar"], recipes=PretrainTask.recipes)
    assert cfg.model.name == "uniemox_vit_large_patch16" and cfg.optim.max_steps == 0


def test_precedence_defaults_recipe_file_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim: {max_steps: 50, blr: 2.0e-3}\nmodel: {arch: {depth: 4}}\n")
    cfg = resolve_config(PretrainConfig, str(path), ["optim.max_steps=7"], PretrainTask.recipes)
    assert cfg.optim.max_steps == 7                                        # override > file
    assert cfg.optim.blr == 2.0e-3                                         # file > recipe (1.5e-3)
    assert cfg.model.arch == {"img_size": 64, "depth": 4}                  # sections merge key by key
    assert cfg.optim.warmup_steps == 30 and cfg.optim.weight_decay == 0.05  # recipe > default, default


def test_classification_recipes_follow_the_users_choices(tmp_path):
    probe = resolve_config(FinetuneConfig, overrides=["train.linear_probe=true"], recipes=ClassifyTask.recipes)
    assert probe.optim.name == "lars" and probe.optim.blr == 5.0 and probe.log.run_dir == "runs/sample-probe"
    grid = resolve_config(FinetuneConfig, overrides=["train.probe_grid=true"], recipes=ClassifyTask.recipes)
    assert grid.train.linear_probe and grid.optim.name == "lars" and grid.optim.blr == 1.0
    assert grid.probe.blrs == (0.1, 0.5, 2.0, 5.0, 20.0) and grid.log.run_dir == "runs/sample-probe-grid"
    grid = resolve_config(FinetuneConfig, overrides=["train.probe_grid=true", "data.path=/d/fi"],
                          recipes=ClassifyTask.recipes)
    assert grid.probe.blrs == (0.03, 0.1, 0.3, 1.0, 3.0, 10.0) and grid.optim.epochs == 90.0
    ft = resolve_config(FinetuneConfig, overrides=["data.path=/d/fi"], recipes=ClassifyTask.recipes)
    assert ft.optim.name == "adamw" and ft.aug.mixup == 0.8 and ft.model.name == "uniemox_vit_large_patch16"
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text('{"run_config": {"model": {"name": "uniemox_vit_small_patch16", '
                                        '"arch": {"img_size": 96}}}}')
    init = resolve_config(FinetuneConfig, overrides=[f"model.init={export}"], recipes=ClassifyTask.recipes)
    assert init.model.name == "uniemox_vit_small_patch16" and init.model.arch == {"img_size": 96, "depth": 6}


def test_teacher_sample_recipe_only_without_data():
    cfg = resolve_config(TeacherTrainConfig, recipes=TeacherTask.recipes)
    assert cfg.data.emotion_only_prob == 0.3 and cfg.optim.max_steps == 400
    cfg = resolve_config(TeacherTrainConfig, overrides=["data.shards=/d/x.tar"], recipes=TeacherTask.recipes)
    assert cfg.data.emotion_only_prob == 0.0 and cfg.optim.betas == (0.9, 0.98)


def test_recipes_and_deepspeed_configs_are_found_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert recipe("pretrain_sample")["optim"]["max_steps"] == 300
    for given in (None, "zero2", "configs/zero2.json"):
        assert os.path.samefile(deepspeed_config(given), os.path.join(CONFIGS, "zero2.json"))
    (tmp_path / "mine.json").write_text("{}")
    assert deepspeed_config("mine.json") == "mine.json"
    with pytest.raises(UserError, match="DeepSpeed config not found: nope.json .shipped: zero0.json"):
        deepspeed_config("nope.json")
    with pytest.raises(UserError, match="no shipped recipe 'nope'"):
        recipe("nope")


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
