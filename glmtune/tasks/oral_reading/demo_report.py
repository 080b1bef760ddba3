"""`glmtune demo`'s report for the oral task: predictions on the held-out split (base and tuned), a short
report (samples used/dropped/truncated, loss start -> end, answer-format validity base vs tuned) and the
per-dimension table: the tuned model next to the base model, the metrics-only learner of `oral baseline`
(fitted on the training passages, scored on the held-out ones), the rubric engine and a constant, with one
line saying what to conclude.
"""

from __future__ import annotations

import json
from pathlib import Path


def _predict(engine, items, path: Path, cfg) -> list[str]:
    from glmtune.evaluate.generate import generate_predictions

    res = generate_predictions(engine, items, path, batch_size=cfg.eval.batch_size,
                               max_new_tokens=cfg.eval.max_new_tokens, restart=True)
    by_id = {r["id"]: r["prediction"] for r in res["rows"]}
    return [by_id.get(it.id) for it in items]


def report(cfg, files, result, console) -> dict:
    from rich.table import Table

    from glmtune.data.formats import read_file
    from glmtune.evaluate.generate import items_from_conversations
    from glmtune.inference.engine import HFEngine
    from glmtune.tasks.oral_reading.rubric import DIMENSIONS
    from glmtune.tasks.oral_reading.score import score_answers
    from glmtune.utils.io import atomic_write_json

    run_dir, s = result.run_dir, result.summary
    console.rule("4. predict on the held-out split")
    test_rows = [json.loads(x) for x in Path(files["test"]).read_text("utf-8").splitlines() if x.strip()]
    convs, _ = read_file(files["test"])
    items, _ = items_from_conversations(convs)
    labels = [r["rubric"] for r in test_rows]
    out = run_dir / "demo"
    tuned = _predict(HFEngine.from_run(run_dir), items, out / "tuned_predictions.jsonl", cfg)
    base = _predict(HFEngine.from_model_dir(cfg.model.path), items, out / "base_predictions.jsonl", cfg)
    learner = _learner_predictions(files, [r["id"] for r in test_rows], cfg.data.split_seed)
    rep_tuned = score_answers(tuned, labels, rubric=labels, learner=learner)
    rep_base = score_answers(base, labels)

    console.rule("5. report")
    d = s["data"]
    console.print(f"samples: {d['samples_used']} used of {d['samples_seen']}; {d['dropped_overlength']} dropped, "
                  f"{d['truncated']} truncated, {d['bad_records_skipped']} bad records skipped")
    console.print(f"loss: {s['loss_first']:.3f} -> {s['loss_last']:.3f} over {s['steps']} steps "
                  f"({s['tokens_per_s']} tokens/s, {s['wall_s']} s)")
    console.print(f"answer format valid on held-out ({len(items)} samples): base {rep_base['format_valid_rate']:.0%}"
                  f" -> tuned {rep_tuned['format_valid_rate']:.0%}")
    table = Table(title="per-dimension exact match / QWK on held-out (labels = rubric bands)")
    for col in ("dimension", "tuned", "base", "learner", "rubric engine", "constant"):
        table.add_column(col, justify="right")
    bl = rep_tuned["baselines"]
    for dim in DIMENSIONS:
        cells = [rep_tuned["dimensions"][dim], rep_base["dimensions"][dim], bl.get("learner", {}).get(dim),
                 bl["rubric"][dim], bl["constant"][dim]]
        table.add_row(dim, *(_cell(c) for c in cells))
    console.print(table)
    conclusion = _conclusion(rep_tuned)
    console.print(f"conclusion: {conclusion}")
    report = {"run_dir": str(run_dir), "train": s, "held_out": len(items),
              "format_valid": {"base": rep_base["format_valid_rate"], "tuned": rep_tuned["format_valid_rate"]},
              "tuned": rep_tuned, "base": rep_base, "conclusion": conclusion}
    atomic_write_json(out / "demo_report.json", report)
    console.print(f"report: {out / 'demo_report.json'}")
    return report


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def _cell(stats: dict | None) -> str:
    return "—" if stats is None else f"{_fmt(stats['exact'])} / {_fmt(stats['qwk'])}"


def _learner_predictions(files: dict, test_ids: list[str], seed: int) -> list[dict[str, int] | None] | None:
    """`oral baseline`'s learner fitted on the demo's training passages, predicting the held-out items
    (None when the bundled items cannot be regenerated for these files)."""
    from glmtune.tasks.oral_reading.baseline import holdout_predictions
    from glmtune.tasks.oral_reading.demo_data import demo_items
    from glmtune.tasks.oral_reading.rubric import compute_metrics

    train_ids = [json.loads(x)["id"] for x in Path(files["train"]).read_text("utf-8").splitlines() if x.strip()]
    by_id = {it.id: it for it in demo_items(len(train_ids) + len(test_ids), seed)}
    if any(i not in by_id for i in train_ids + test_ids):
        return None
    preds = holdout_predictions([by_id[i] for i in train_ids], [by_id[i] for i in test_ids],
                                lambda it: compute_metrics(it.record, it.text).bands)
    return list(preds)


def _conclusion(rep: dict) -> str:
    """One line: does the tuned model beat the bars on these labels (mean exact and QWK over dimensions)?"""
    from glmtune.tasks.oral_reading.baseline import verdict
    from glmtune.tasks.oral_reading.rubric import DIMENSIONS

    def mean(block: dict) -> dict:
        return {k: sum((block[d][k] or 0.0) for d in DIMENSIONS) / len(DIMENSIONS) for k in ("exact", "qwk")}

    bl = rep["baselines"]
    learner = mean(bl["learner"]) if "learner" in bl else {"exact": 0.0, "qwk": 0.0}
    return verdict({"tuned": mean(rep["dimensions"]), "learner": learner, "rubric": mean(bl["rubric"])})
