"""One typed config: YAML + dotted overrides; unknown keys and bad values are errors naming the key path."""

import pytest

from glmtune.cli import main
from glmtune.config import ConfigError, dump_config, load_config


def test_defaults_and_typed_overrides():
    cfg = load_config(None, ["train.lr=5e-4", "method.rank=16", "data.cutoff_len=3072", "train.resume=never"])
    assert cfg.train.lr == 5e-4 and isinstance(cfg.train.lr, float)
    assert cfg.method.name == "lora" and cfg.method.rank == 16
    assert cfg.data.cutoff_len == 3072
    assert cfg.model.path == "tiny:glm4"


def test_yaml_file_then_overrides_win(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1.0e-4\n  epochs: 7\nmethod:\n  name: lora\n  rank: 4\n")
    cfg = load_config(p, ["train.epochs=2"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.method.rank) == (1e-4, 2, 4)


@pytest.mark.parametrize("override,needle", [
    ("train.lrr=1", "unknown key 'train.lrr'"),
    ("method.rnk=4", "unknown key 'method.rnk'"),
    ("trian.lr=1", "unknown key 'trian'"),
    ("data.overlength=cut", "data.overlength: Input should be 'drop', 'truncate' or 'error'"),
    ("train.batch_size=0", "train.batch_size: Input should be greater than or equal to 1"),
])
def test_errors_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_yaml_typo_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  cutof_len: 192\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(p) in str(err.value) and "unknown key 'data.cutof_len'" in str(err.value)


def test_cross_field_check_in_its_section():
    with pytest.raises(ConfigError, match="reduce_lr_on_plateau needs eval loss"):
        load_config(None, ["train.scheduler=reduce_lr_on_plateau"])


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "method.use_dora=true"])
    p = tmp_path / "r.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


def test_config_show_cli(capsys):
    assert main(["config", "show", "train.epochs=7", "data.cutoff_len=192"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7.0" in out and "cutoff_len: 192" in out
    assert main(["config", "show", "train.nope=1"]) == 2
    assert "unknown key 'train.nope'" in capsys.readouterr().err
