"""`glmtune config show|validate [CONFIG] [key=value ...]` and the shared CONFIG/override arguments."""

from __future__ import annotations

import argparse

HELP = "Show the resolved config (defaults + YAML + overrides) or validate a config file."


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Every config-driven verb takes `[CONFIG] [section.key=value ...]` (or `--config FILE`)."""
    parser.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                        help="optional YAML config file, then overrides such as train.lr=5e-4")
    parser.add_argument("--config", dest="config_file", metavar="FILE", default=None,
                        help="YAML config file (the same as giving it first among the positionals)")


def add_source_args(parser: argparse.ArgumentParser, *, required: bool = True):
    """`--run RUN | --model MODEL`, the model a verb loads; returns the group so a verb can add its own
    alternatives (export's `--merged`). chat, webchat and predict load `--model` with the config's
    model.trust_remote_code and model.dtype."""
    src = parser.add_mutually_exclusive_group(required=required)
    src.add_argument("--run", help="run folder from glmtune train (base + what it trained; its config.yaml is "
                                   "the base of this verb's config)")
    src.add_argument("--model", help="model folder (plain, exported, GGUF) or tiny:glm4")
    return src


def config_from_args(args: argparse.Namespace, flags: dict | None = None):
    """The verb's RunConfig, built the same way for every verb: the run's `config.yaml` (with `--run`) as
    the base, then the config file, then `section.key=value` overrides, then the verb's own flags that name
    a config key. `flags` = {argparse dest: dotted key, or (dotted key, value -> config value)}; a flag whose
    (converted) value is None leaves the key alone."""
    from pathlib import Path

    from glmtune.config.load import RUN_CONFIG, ConfigError, load_config

    items = list(getattr(args, "items", None) or [])
    path = getattr(args, "config_file", None)
    if items and "=" not in items[0]:
        if path:
            raise ConfigError(f"two config files: {items[0]} and --config {path}; give one")
        path = items.pop(0)
    bad = [i for i in items if "=" not in i]
    if bad:
        raise ConfigError(f"expected section.key=value overrides, got {bad}")
    run = getattr(args, "run", None)
    base = Path(run) / RUN_CONFIG if run else None
    values = []
    for dest, key in (flags or {}).items():
        key, convert = key if isinstance(key, tuple) else (key, lambda v: v)
        value = convert(getattr(args, dest, None))
        if value is not None:
            values.append((key, value))
    return load_config(path, items, base=base if base is not None and base.exists() else None, values=values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show", "validate"])
    add_config_args(parser)


def run(args) -> int:
    from glmtune.config.load import dump_config

    cfg = config_from_args(args)
    if args.action == "show":
        print(dump_config(cfg), end="")
    else:
        print("config is valid")
    return 0
