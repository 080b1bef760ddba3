"""`glmtune predict --run RUN --test FILE --out predictions.jsonl` — answer every sample of a test split.

Writes one JSON line per sample (id, source, prediction, reference) batch by batch; an interrupted run
resumes where it stopped. Scoring lives in `glmtune eval`.
"""

from __future__ import annotations

import argparse

HELP = "Write predictions for a JSONL test split with a trained run or a model folder (resumable)."


FLAGS = {"batch_size": "eval.batch_size", "max_new_tokens": "eval.max_new_tokens", "temperature": "eval.temperature"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from glmtune.config.cli import add_config_args, add_source_args

    add_source_args(parser)
    parser.add_argument("--test", help="JSONL/JSON test file in any supported format (default: data.test)")
    parser.add_argument("--out", required=True, help="predictions JSONL to write")
    parser.add_argument("--batch-size", type=int, help="eval.batch_size (default 8)")
    parser.add_argument("--max-new-tokens", type=int, help="eval.max_new_tokens (default 128)")
    parser.add_argument("--temperature", type=float, help="eval.temperature (default 0: greedy)")
    add_config_args(parser)


def run(args) -> int:
    from glmtune.config.cli import config_from_args
    from glmtune.config.load import ConfigError
    from glmtune.data.formats import read_file
    from glmtune.evaluate.generate import generate_predictions, items_from_conversations
    from glmtune.serve.chat_cli import load_engine

    cfg = config_from_args(args, FLAGS)
    test = args.test or cfg.data.test
    if not test:
        raise ConfigError("no test set: give --test FILE or data.test=FILE")
    convs, issues = read_file(test)
    for issue in issues:
        print(f"skipped: {issue}")
    items, problems = items_from_conversations(convs)
    for p in problems:
        print(f"skipped: {p}")
    if not items:  # nothing to answer is a mistake, not an empty success
        from glmtune.errors import InputError

        skipped = len(issues) + len(problems)
        raise InputError(f"{test}: no usable test samples"
                         + (f" ({skipped} skipped, listed above)" if skipped else " (the file has no records)"))
    engine = load_engine(args, cfg)
    e = cfg.eval
    res = generate_predictions(engine, items, args.out, batch_size=e.batch_size, max_new_tokens=e.max_new_tokens,
                               temperature=e.temperature)
    print(f"{len(res['rows'])} predictions in {args.out} ({res['resumed']} already there, {res['generated']} new, "
          f"{len(issues) + len(problems)} samples skipped)")
    return 0
