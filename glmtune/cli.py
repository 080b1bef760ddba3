"""`glmtune VERB ...`: the verb table. Each verb module exposes HELP, add_arguments(parser), run(args)->int.

Verb modules import torch & co. inside run(), so `glmtune --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
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
    "convert": "glmtune.models.convert_cli",
    "chat": "glmtune.serve.chat_cli",
    "webchat": "glmtune.serve.webui",
    "web": "glmtune.web.app",
    "serve": "glmtune.serve.cli",
    "bench": "glmtune.serve.loadtest",
}


def verbs() -> dict[str, str]:
    """The generic verbs, then each registered task's own (glmtune.registry loads the bundled glmtune.tasks)."""
    from glmtune.registry import tasks

    return {**VERBS, **{t.verb: t.cli_module for t in tasks().values() if t.verb and t.cli_module}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmtune", description=__import__("glmtune").__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    parser.verb_parsers = {}
    for verb, module_name in verbs().items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module, verb=verb)
        parser.verb_parsers[verb] = p
    return parser


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """Flags may sit anywhere among the positionals: `glmtune train cfg.yaml --nproc 2 train.lr=1e-4` keeps
    `train.lr=1e-4` as an override (plain argparse stops collecting positionals at the first flag)."""
    parser = build_parser()
    verb_parser = parser.verb_parsers.get(argv[0]) if argv else None
    if verb_parser is None:
        return parser.parse_args(argv)  # --help, no verb, an unknown verb: argparse says what is wrong
    try:
        return verb_parser.parse_intermixed_args(argv[1:])
    except TypeError:  # verbs with sub-commands (eval compare, a task's sub-commands, ...): argparse cannot intermix those
        return verb_parser.parse_args(argv[1:])


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(sys.argv[1:] if argv is None else list(argv))
    from glmtune.errors import GlmtuneError

    try:
        return int(args._module.run(args) or 0)
    except GlmtuneError as err:  # ConfigError and every other error glmtune raises on purpose
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
