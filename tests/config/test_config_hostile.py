"""Config input a user can get wrong (issue 19 rows 8, 9): one ConfigError naming where, never a traceback."""

import pytest

from glmtune.config.load import ConfigError, load_config


@pytest.mark.parametrize("value", ["inf", "-inf", ".inf", "nan", ".nan", "1e999"])
def test_non_finite_numbers_are_rejected(value):
    with pytest.raises(ConfigError, match="train.lr: Input should be a finite number"):
        load_config(None, [f"train.lr={value}"])


def test_non_finite_number_in_a_yaml_file_is_rejected(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  max_grad_norm: .inf\n  warmup_ratio: .nan\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "train.max_grad_norm: Input should be a finite number" in str(err.value)
    assert "train.warmup_ratio: Input should be a finite number" in str(err.value)


@pytest.mark.parametrize("text, where", [
    ("train:\n  lr: 1e-4\n   epochs: 1\n", ":3:10: YAML syntax error: mapping values are not allowed here"),
    ("train:\n  epochs: [1\nmodel:\n  path: x\n", ":3:6: YAML syntax error: while parsing a flow sequence"),
    ("train: {lr: 1\n", ":2:1: YAML syntax error:"),
    ("\tmodel: x\n", ":1:1: YAML syntax error:"),
])
def test_yaml_syntax_error_names_file_line_and_column(tmp_path, text, where):
    f = tmp_path / "bad.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value).startswith(f"{f}{where}")


def test_config_that_is_not_utf8_or_a_folder(tmp_path):
    f = tmp_path / "gbk.yaml"
    f.write_bytes("model:\n  path: 模型\n".encode("gbk"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(f)
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


def test_override_value_that_is_not_yaml():
    with pytest.raises(ConfigError, match=r"override 'train.output_dir=\[runs': the value is not valid YAML"):
        load_config(None, ["train.output_dir=[runs"])
