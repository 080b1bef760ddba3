"""`glmtune eval` — generate on a test split and score it; `glmtune eval compare` — reports side by side.

    glmtune eval --run runs/demo --test data/test.jsonl --out runs/demo/eval --base-too --forgetting
    glmtune eval --model-dir exported/ --test test.jsonl eval.batch_size=16
    glmtune eval --endpoint http://127.0.0.1:8000/v1 --endpoint-model glm4-oral --test test.jsonl --out eval/api
    glmtune eval compare runs/a/eval runs/b/eval eval/api --out eval/compare

The output folder holds predictions.jsonl (appended batch by batch; rerun the same command to resume),
report.json, report.md, scores.jsonl and confusion.png; with --base-too also base/ and compare.*.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from glmtune.config.cli import add_config_args, config_from_args
from glmtune.errors import InputError

HELP = "Evaluate a run, a model folder or an OpenAI-compatible endpoint on a test set (BLEU/ROUGE, field metrics, forgetting); 'eval compare' lines up reports."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]  # the usage examples, incl. `eval compare REPORT... --out DIR`
    add_config_args(parser)
    src = parser.add_argument_group("what to evaluate (one of)")
    src.add_argument("--run", help="training run folder (base model + what was trained)")
    src.add_argument("--model-dir", help="plain or exported model folder, or tiny:glm4")
    src.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    src.add_argument("--endpoint-model", help="model name to request from --endpoint")
    src.add_argument("--api-key", help="endpoint API key (default: $OPENAI_API_KEY, see eval.api_key_env)")
    parser.add_argument("--test", help="test JSONL (default: data.test from the config)")
    parser.add_argument("--out", help="output folder (default: eval.out_dir, else <run>/eval or eval/<name>)")
    parser.add_argument("--label", help="name of this model in reports and comparisons")
    parser.add_argument("--base-too", action="store_true", help="also evaluate the base model and compare")
    parser.add_argument("--forgetting", action="store_true", help="general-prompt check, base vs tuned (eval.forgetting)")
    parser.add_argument("--base-model", help="base for --base-too/--forgetting: a model folder (with --model-dir) "
                                             "or a model name on the same endpoint (with --endpoint); a run knows its base")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test samples")
    parser.add_argument("--restart", action="store_true", help="discard existing predictions instead of resuming")


def _fingerprint(*folders: Path) -> str:
    """Changes when the weights in these folders change, so stale predictions are never resumed."""
    h = hashlib.sha1()
    for folder in folders:
        if folder.is_dir():
            for f in sorted(folder.iterdir()):
                if f.is_file():
                    st = f.stat()
                    h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


class _Target:
    """One model to evaluate: how to build its engine and how to describe it in reports."""

    def __init__(self, kind: str, ref, args, cfg, name: str):
        # ref: a glmtune.run.folder.Run ("run"), a model folder ("dir"), a model name ("endpoint")
        self.kind, self.ref, self.args, self.cfg, self.name = kind, ref, args, cfg, name

    def describe(self) -> dict:
        if self.kind == "run":
            return {"model": f"run:{self.ref.dir.resolve()}", "model_fingerprint": _fingerprint(self.ref.artifact)}
        if self.kind == "dir":
            from glmtune.models.load import resolve_path

            return {"model": f"dir:{self.ref}", "model_fingerprint": _fingerprint(resolve_path(self.ref))}
        return {"model": f"endpoint:{self.args.endpoint}#{self.ref}"}

    def engine(self):
        if self.kind == "endpoint":
            from glmtune.evaluate.generate import OpenAIEngine

            key = self.args.api_key or os.environ.get(self.cfg.eval.api_key_env)
            return OpenAIEngine(self.args.endpoint, self.ref, key, concurrency=self.cfg.eval.batch_size,
                                timeout=self.cfg.eval.request_timeout)
        from glmtune.inference.engine import HFEngine

        if self.kind == "run":
            return HFEngine.from_run(self.ref)
        return HFEngine.from_model_dir(self.ref, trust_remote_code=self.cfg.model.trust_remote_code)


def _targets(args, cfg) -> tuple[_Target, _Target | None]:
    chosen = [x for x in (args.run, args.model_dir, args.endpoint) if x]
    if len(chosen) != 1:
        raise InputError("give exactly one of --run RUN, --model-dir DIR, --endpoint URL")
    base = None
    if args.run:
        from glmtune.run.folder import Run

        run = Run.open(args.run)
        tuned = _Target("run", run, args, cfg, args.label or run.dir.resolve().name)
        base = _Target("dir", args.base_model or run.base, args, cfg, "base")
    elif args.model_dir:
        tuned = _Target("dir", args.model_dir, args, cfg, args.label or Path(args.model_dir).name.replace(":", "-"))
        if args.base_model:
            base = _Target("dir", args.base_model, args, cfg, "base")
    else:
        if not args.endpoint_model:
            raise InputError("--endpoint needs --endpoint-model NAME")
        tuned = _Target("endpoint", args.endpoint_model, args, cfg, args.label or args.endpoint_model)
        if args.base_model:
            base = _Target("endpoint", args.base_model, args, cfg, "base")
    return tuned, base


def _progress(label: str):
    def show(done: int, total: int) -> None:
        print(f"\r{label}: {done}/{total} predictions", end="\n" if done == total else "", file=sys.stderr, flush=True)
    return show


def _evaluate(target: _Target, engine, items, out: Path, cfg, args, field_spec, test_file: str) -> dict:
    from glmtune.evaluate.generate import generate_predictions
    from glmtune.evaluate.report import build_report

    e = cfg.eval
    meta = {**target.describe(), "test_file": test_file}
    gen = generate_predictions(engine, items, out / "predictions.jsonl", batch_size=e.batch_size,
                               max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
                               meta=meta, restart=args.restart, on_batch=_progress(target.name))
    if gen["dropped_lines"]:
        print(f"note: dropped {gen['dropped_lines']} unreadable line(s) of an interrupted run", file=sys.stderr)
    report, per = build_report(gen["rows"], field_spec=field_spec, metrics=e.metrics,
                               meta={"label": target.name, **meta, "max_new_tokens": e.max_new_tokens,
                                     "temperature": e.temperature, "top_p": e.top_p},
                               generation=gen)
    report["_per_sample"] = per
    return report


def run_compare(refs: list[str], out: str | None) -> int:
    from glmtune.evaluate.compare import write_comparison

    if len(refs) < 1:
        raise InputError("eval compare needs at least one report (folder or report.json)")
    paths = write_comparison(refs, out or "eval/compare")
    for p in paths.values():
        print(f"wrote {p}")
    return 0


def run(args) -> int:
    if args.items and args.items[0] == "compare":
        return run_compare(args.items[1:], args.out)
    cfg = config_from_args(args)
    e = cfg.eval
    from glmtune.data.formats import read_file
    from glmtune.evaluate.fields import FieldSpec
    from glmtune.evaluate.generate import PredictionsMismatch, items_from_conversations
    from glmtune.evaluate.report import print_summary, write_report
    from glmtune.run.folder import EVAL

    tuned, base = _targets(args, cfg)
    test = args.test or cfg.data.test
    if not test:
        raise InputError("no test set: give --test FILE or data.test=FILE")
    convs, issues = read_file(test, cfg.data.format, cfg.data.columns)
    items, problems = items_from_conversations(convs)
    for msg in [str(i) for i in issues] + problems:
        print(f"warning: {msg}", file=sys.stderr)
    if args.limit:
        items = items[:args.limit]
    if not items:
        raise InputError(f"{test}: no usable test samples")
    field_spec = FieldSpec.load(e.field_spec) if ("fields" in e.metrics and e.field_spec) else None
    out = Path(args.out or e.out_dir or (tuned.ref.dir / EVAL if tuned.kind == "run" else Path("eval") / tuned.name))
    want_forgetting = args.forgetting or e.forgetting
    if (args.base_too or want_forgetting) and base is None:
        raise InputError("--base-too/--forgetting need the base model: pass --base-model")

    from glmtune.evaluate import forgetting as fg

    fitems = fg.load_items(e.forgetting_set) if want_forgetting else None
    try:
        engine = tuned.engine()
        report = _evaluate(tuned, engine, items, out, cfg, args, field_spec, str(Path(test).resolve()))
        tuned_forget = fg.score_engine(engine, fitems, e.forgetting_max_new_tokens, e.batch_size) if fitems else None
        del engine  # free the tuned model before loading the base one
        base_report = None
        if args.base_too or fitems:
            engine = base.engine()
            if args.base_too:
                base_report = _evaluate(base, engine, items, out / "base", cfg, args, field_spec, str(Path(test).resolve()))
            if fitems:
                report["forgetting"] = fg.forgetting_delta(fg.score_engine(engine, fitems, e.forgetting_max_new_tokens,
                                                                            e.batch_size), tuned_forget, fitems)
            del engine
    except PredictionsMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if tuned.kind != "endpoint":
            raise
        import openai

        if not isinstance(err, openai.OpenAIError):
            raise
        print(f"error: endpoint {args.endpoint}: {err}\npredictions so far are kept in {out}; rerun to resume",
              file=sys.stderr)
        return 2
    if base_report is not None:
        write_report(out / "base", base_report, base_report.pop("_per_sample"))
        report["base"] = {k: base_report[k] for k in ("model", "text", "fields") if k in base_report}
        if "fields" in report["base"]:
            report["base"]["fields"] = {k: report["base"]["fields"][k] for k in ("format_validity", "valid", "n")}
    paths = write_report(out, report, report.pop("_per_sample"))
    print_summary(report)
    if "forgetting" in report:
        fg.render_forgetting(report["forgetting"])
    if base_report is not None:
        from glmtune.evaluate.compare import write_comparison

        paths.update(write_comparison([out / "base", out], out))
    print(f"report: {paths['report.md']}")
    return 0
