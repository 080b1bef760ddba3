"""Every verb builds its config the same way: the run's config.yaml (with --run) as the base, then the
config file (first positional or --config), then section.key=value overrides, then the verb's own flags that
name a config key. Parsed through the real command line; no model is loaded."""

import pytest
import yaml

from glmtune.cli import parse_command_line
from glmtune.config.cli import config_from_args
from glmtune.config.load import ConfigError

# one key per layer, each also set by every lower layer, so the winner shows the precedence
RUN = {"serve": {"max_queue": 7, "max_batch_size": 3, "port": 8101, "api_key": "run"},
       "eval": {"batch_size": 3, "max_new_tokens": 11}, "export": {"size": "1GB", "tolerance": 0.5},
       "train": {"lr": 0.001}}
FILE = {"serve": {"max_batch_size": 4, "port": 8102}, "eval": {"batch_size": 4, "max_new_tokens": 12},
        "export": {"size": "2GB"}, "train": {"lr": 0.002}}


@pytest.fixture
def paths(tmp_path):
    from glmtune.config.load import dump_config, load_config

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, [f"{s}.{k}={v}" for s, kv in RUN.items() for k, v in kv.items()])
    (run / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    file = tmp_path / "file.yaml"
    file.write_text(yaml.safe_dump(FILE), encoding="utf-8")
    return run, file


def cfg_of(argv):
    return config_from_args(parse_command_line(argv), _flags(argv[0]))


def _flags(verb):
    import importlib

    from glmtune.cli import verbs

    return getattr(importlib.import_module(verbs()[verb]), "FLAGS", None)


@pytest.mark.parametrize("file_flag", [False, True])
@pytest.mark.parametrize("verb,extra", [
    ("serve", []), ("chat", []), ("webchat", []), ("predict", ["--out", "p.jsonl"]), ("export", []),
    ("eval", []),
])
def test_run_verbs_layer_run_file_overrides(paths, verb, extra, file_flag):
    run, file = paths
    src = ["--config", str(file)] if file_flag else [str(file)]
    cfg = cfg_of([verb, "--run", str(run), *extra, *src, "serve.port=8103", "eval.max_new_tokens=13",
                  "export.size=3GB"])
    assert cfg.serve.max_queue == 7 and cfg.export.tolerance == 0.5        # the run's config.yaml is the base
    assert cfg.serve.max_batch_size == 4 and cfg.eval.batch_size == 4        # the file over the run
    assert (cfg.serve.port, cfg.eval.max_new_tokens, cfg.export.size) == (8103, 13, "3GB")  # overrides over the file
    assert cfg.train.lr == 0.002


def test_flags_that_name_a_key_win_over_everything(paths):
    run, file = paths
    over = [str(file), "serve.port=8103", "eval.batch_size=6", "export.size=3GB", "serve.request_timeout_s=5"]
    assert cfg_of(["serve", "--run", str(run), *over, "--port", "8104"]).serve.port == 8104
    assert cfg_of(["serve", "--run", str(run), *over]).serve.port == 8103
    p = cfg_of(["predict", "--run", str(run), "--out", "p.jsonl", *over, "--batch-size", "9"])
    assert (p.eval.batch_size, p.eval.max_new_tokens) == (9, 12)
    e = cfg_of(["export", "--run", str(run), *over, "--size", "4GB", "--no-verify"])
    assert (e.export.size, e.export.verify) == ("4GB", False)
    assert cfg_of(["export", "--run", str(run), *over]).export.verify is True
    b = cfg_of(["bench", "serve", "http://127.0.0.1:1/v1", *over, "--api-key", "flag"])
    assert (b.serve.api_key, b.serve.request_timeout_s) == ("flag", 5)


@pytest.mark.parametrize("verb,extra", [("train", []), ("plan", []), ("config", ["show"]), ("data", ["stats"]),
                                        ("chat", ["--model", "tiny:glm4"]), ("bench", ["serve", "http://x/v1"])])
def test_verbs_without_a_run_take_file_then_overrides(paths, verb, extra):
    _, file = paths
    for src in ([str(file)], ["--config", str(file)]):
        cfg = cfg_of([verb, *extra, *src, "eval.batch_size=8"])
        assert (cfg.train.lr, cfg.serve.port, cfg.eval.batch_size) == (0.002, 8102, 8)


def test_two_config_files_are_an_error(paths):
    run, file = paths
    with pytest.raises(ConfigError, match="two config files"):
        cfg_of(["serve", "--run", str(run), str(file), "--config", str(file)])


def test_a_bad_override_is_an_error_for_every_verb(paths):
    run, _ = paths
    for argv in (["chat", "--run", str(run)], ["predict", "--run", str(run), "--out", "p"], ["bench", "serve", "u"]):
        with pytest.raises(ConfigError, match="serve.nope"):
            cfg_of([*argv, "serve.nope=1"])
