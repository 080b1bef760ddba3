"""`glmtune predict --run RUN --test FILE --out predictions.jsonl` — answer every sample of a test split.

Writes one JSON line per sample (id, source, prediction, reference) batch by batch; an interrupted run
resumes where it stopped. Scoring lives in `glmtune eval`.
"""

from __future__ import annotations

import argparse

HELP = "Write predictions for a JSONL test split with a trained run or a model folder (resumable)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder from glmtune train (base + trained adapter)")
    src.add_argument("--model", help="plain or exported model folder, or tiny:glm4")
    parser.add_argument("--test", required=True, help="JSONL/JSON test file in any supported format")
    parser.add_argument("--out", required=True, help="predictions JSONL to write")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)


def run(args) -> int:
    from glmtune.data.formats import read_file
    from glmtune.evaluate.generate import generate_predictions, items_from_conversations
    from glmtune.inference.engine import HFEngine

    convs, issues = read_file(args.test)
    for issue in issues:
        print(f"skipped: {issue}")
    items, problems = items_from_conversations(convs)
    for p in problems:
        print(f"skipped: {p}")
    if not items:  # nothing to answer is a mistake, not an empty success
        from glmtune.errors import InputError

        skipped = len(issues) + len(problems)
        raise InputError(f"{args.test}: no usable test samples"
                         + (f" ({skipped} skipped, listed above)" if skipped else " (the file has no records)"))
    engine = HFEngine.from_run(args.run) if args.run else HFEngine.from_model_dir(args.model)
    res = generate_predictions(engine, items, args.out, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    print(f"{len(res['rows'])} predictions in {args.out} ({res['resumed']} already there, {res['generated']} new, "
          f"{len(issues) + len(problems)} samples skipped)")
    return 0
