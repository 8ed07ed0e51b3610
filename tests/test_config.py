import pytest

from uniemox.config import load_config, save_config, to_dict
from uniemox.errors import UserError
from uniemox.config.pretrain import PretrainConfig


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: uniemox_vit_tiny_patch16\n  arch: {depth: 2}\ndata:\n  batch_size: 8\n")
    cfg = load_config(PretrainConfig, str(path), ["data.batch_size=16", "optim.betas=[0.9, 0.99]",
                                                  "optim.blr=1", "teacher.pretrained=none"])
    assert cfg.model.name == "uniemox_vit_tiny_patch16" and cfg.model.arch == {"depth": 2}
    assert cfg.data.batch_size == 16 and cfg.optim.betas == (0.9, 0.99)
    assert cfg.optim.blr == 1.0 and isinstance(cfg.optim.blr, float)
    assert cfg.teacher.pretrained == "none" and cfg.optim.weight_decay == 0.05
    save_config(cfg, tmp_path / "saved.yaml")
    assert to_dict(load_config(PretrainConfig, str(tmp_path / "saved.yaml"))) == to_dict(cfg)


@pytest.mark.parametrize("override,message", [
    ("data.batchsize=8", "unknown config key 'data.batchsize' (did you mean 'batch_size'?)"),
    ("modle.name=x", "unknown config key 'modle'"),
    ("data.batch_size=eight", "config key 'data.batch_size': expected int"),
    ("data.batch_size=8.5", "config key 'data.batch_size': expected int"),
    ("log.progress=maybe", "config key 'log.progress': expected true/false"),
    ("optim.betas=[0.9]", "config key 'optim.betas': expected 2 values"),
    ("data.batch_size", "not of the form key=value"),
    ("model=3", "config key 'model': expected a section"),
    ("optim.lr=fast", "config key 'optim.lr': expected float or null, got 'fast'"),
])
def test_bad_keys_and_types_are_named(override, message):
    with pytest.raises(UserError) as err:
        load_config(PretrainConfig, None, [override])
    assert message in str(err.value)


def test_exponents_without_a_dot_are_numbers():
    """PyYAML reads 5e-4 as a string (YAML 1.1 wants 5.0e-4); a float key takes it as the number."""
    cfg = load_config(PretrainConfig, None, ["optim.lr=5e-4", "optim.weight_decay=1E-2"])
    assert cfg.optim.lr == 5e-4 and cfg.optim.weight_decay == 0.01


def test_bad_yaml_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(PretrainConfig, str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(PretrainConfig, str(tmp_path / "bad.yaml"))


def test_loading_leaves_the_base_untouched():
    base = {"data": {"batch_size": 8}, "model": {"arch": {"depth": 2}}}
    load_config(PretrainConfig, None, ["data.batch_size=16", "model.arch.depth=4"], base=base)
    assert base == {"data": {"batch_size": 8}, "model": {"arch": {"depth": 2}}}


def test_a_tasks_section_defaults_survive_a_partial_section():
    """Regression: a section given in part (one key of optim) once rebuilt the whole section from
    the shared defaults, silently dropping the teacher's CLIP defaults (wd 0.2, betas 0.98)."""
    from uniemox.config.clip_teacher import TeacherTrainConfig
    cfg = load_config(TeacherTrainConfig, None, ["optim.max_steps=5"])
    assert cfg.optim.max_steps == 5 and cfg.optim.weight_decay == 0.2 and cfg.optim.betas == (0.9, 0.98)


@pytest.mark.parametrize("override,message", [
    ("log.every=0", "config key 'log.every': must be in [1, unbounded, got 0"),
    ("checkpoint.every=-1", "config key 'checkpoint.every': must be in [0, unbounded, got -1"),
    ("model.mask_ratio=1.0", "config key 'model.mask_ratio': must be in [0.0, 1.0), got 1.0"),
    ("optim.max_steps=-5", "config key 'optim.max_steps': must be in [0, unbounded, got -5"),
    ("optim.blr=.nan", "config key 'optim.blr': must be a finite number"),
    ("train.precision=fp8", "config key 'train.precision': must be one of auto, bf16, fp16, fp32, got 'fp8'"),
    ("model.fusion=concat", "config key 'model.fusion': must be one of easy, weighted_sum"),
])
def test_values_outside_their_declared_range_are_named(override, message):
    with pytest.raises(UserError) as err:
        load_config(PretrainConfig, None, [override])
    assert message in str(err.value)


def test_label_fraction_range():
    from uniemox.config.classify import FinetuneConfig
    for bad in ("1.5", "0", "-0.1"):
        with pytest.raises(UserError, match="data.label_fraction': must be in \\(0.0, 1.0\\]"):
            load_config(FinetuneConfig, None, [f"data.label_fraction={bad}"])
    assert load_config(FinetuneConfig, None, ["data.label_fraction=0.1"]).data.label_fraction == 0.1
