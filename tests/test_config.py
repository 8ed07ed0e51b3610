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
])
def test_bad_keys_and_types_are_named(override, message):
    with pytest.raises(UserError) as err:
        load_config(PretrainConfig, None, [override])
    assert message in str(err.value)


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
