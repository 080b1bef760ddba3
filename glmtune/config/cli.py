"""`glmtune config show|validate [CONFIG] [key=value ...]` and the shared CONFIG/override arguments."""

from __future__ import annotations

import argparse

HELP = "Show the resolved config (defaults + YAML + overrides) or validate a config file."


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Every config-driven verb takes `[CONFIG] [section.key=value ...]`."""
    parser.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                        help="optional YAML config file, then overrides such as train.lr=5e-4")


def config_from_args(args: argparse.Namespace):
    from glmtune.config.load import ConfigError, load_config

    items = list(args.items)
    path = None
    if items and "=" not in items[0]:
        path = items.pop(0)
    bad = [i for i in items if "=" not in i]
    if bad:
        raise ConfigError(f"expected section.key=value overrides, got {bad}")
    return load_config(path, items)


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
