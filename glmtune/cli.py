"""`glmtune VERB ...`: the verb table. Each verb module exposes HELP, add_arguments(parser), run(args)->int.

Verb modules import torch & co. inside run(), so `glmtune --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

VERBS: dict[str, str] = {
    "demo": "glmtune.demo",
    "config": "glmtune.config.cli",
    "data": "glmtune.data.cli",
    "plan": "glmtune.plan.cli",
    "train": "glmtune.train.cli",
    "predict": "glmtune.serve.predict_cli",
    "eval": "glmtune.evaluate.cli",
    "export": "glmtune.export.cli",
    "chat": "glmtune.serve.chat_cli",
    "webchat": "glmtune.serve.webui",
    "serve": "glmtune.serve.cli",
    "bench": "glmtune.serve.loadtest",
    "oral": "glmtune.tasks.oral_reading.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmtune", description=__import__("glmtune").__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, module_name in VERBS.items():
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from glmtune.config.load import ConfigError

    try:
        return int(args._module.run(args) or 0)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
