"""`glmtune oral …`: the oral-reading scoring recipe (docs/oral_scoring_spec.md).

    glmtune oral metrics FILE [--text 朗读内容]          the engine's table for a compact string / XML file
    glmtune oral build INPUT --out data.jsonl [--mode raw|evidence] [--labels teacher|rubric]
                       [--label-file labels.jsonl] [--zhipu zhipu.jsonl]
    glmtune oral synth --n 240 --seed 0 --out DIR [--mode evidence|raw] [--test-share 0.15]
    glmtune oral score --pred predictions.jsonl --ref test.jsonl [--json report.json] [--baseline baseline.json]
    glmtune oral baseline DATA [--label-file labels.jsonl] [--k 5] [--learner logistic|boosting]
                       [--pred predictions.jsonl] [--json baseline.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "oral-reading scoring recipe: parse ISE results, compute rubric metrics, build/score SFT data"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="oral_cmd", required=True, metavar="CMD")
    p = sub.add_parser("metrics", help="print the rubric engine's metrics for one ISE result (compact or XML)")
    p.add_argument("file", type=Path)
    p.add_argument("--text", help="the passage, when the file does not carry it (XML does)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("build", help="ISE results (+ labels) -> messages JSONL")
    p.add_argument("input", type=Path, help="JSONL of {id,text,ise[,labels]} or a directory of *.xml/*.txt")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", choices=("raw", "evidence"), default="evidence")
    p.add_argument("--labels", choices=("teacher", "rubric"), default="rubric")
    p.add_argument("--label-file", type=Path, help="JSONL of {id, labels|answer} teacher scores")
    p.add_argument("--zhipu", type=Path, help="also write a validated Zhipu fine-tuning JSONL here")
    p.add_argument("--on-bad-record", choices=("error", "skip"), default="error",
                   help="a file/line that is not a readable ISE result stops the build (error) or is counted and "
                        "skipped (skip), like data.on_bad_record")
    p.add_argument("--rejected", choices=("flag", "keep", "drop"), default="flag",
                   help="results ISE rejected (is_rejected=true): keep with the rejection in the prompt (flag), "
                        "keep as they are (keep) or drop them; always counted")
    p.add_argument("--max-tokens", type=int, default=8192, help="Zhipu per-sample limit")

    p = sub.add_parser("synth", help="synthetic ISE results over the bundled passages -> train/test JSONL")
    p.add_argument("--n", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--mode", choices=("raw", "evidence"), default="evidence")
    p.add_argument("--test-share", type=float, default=0.15)
    p.add_argument("--xml", action="store_true", help="also write each synthetic result as ISE XML")
    p.add_argument("--labels", choices=("rubric", "teacher"), default="rubric",
                   help="rubric bands, or teacher-like noisy 1-5 labels (for `oral baseline`)")

    p = sub.add_parser("score", help="score model answers against labels (+ rubric and constant baselines)")
    p.add_argument("--pred", type=Path, required=True, help="JSONL with id + prediction/output/response")
    p.add_argument("--ref", type=Path, required=True, help="the reference messages JSONL (e.g. test.jsonl)")
    p.add_argument("--json", type=Path, help="write the full JSON report here")
    p.add_argument("--baseline", type=Path, help="`oral baseline --json` report: show its learner next to the model")

    p = sub.add_parser("baseline", help="the bar to beat: a scikit-learn learner from the metrics to the teacher "
                                        "labels (k-fold by passage) vs the rubric, a constant and a tuned model")
    p.add_argument("data", type=Path, help="JSONL of {id,text,ise,labels} or a directory of *.xml/*.txt")
    p.add_argument("--label-file", type=Path, help="JSONL of {id, labels|answer} teacher scores")
    p.add_argument("--k", type=int, default=5, help="folds (grouped by passage; fewer when there are fewer passages)")
    p.add_argument("--learner", choices=("logistic", "boosting"), default="logistic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pred", type=Path, help="a tuned model's answers (JSONL with id + prediction): scored alongside")
    p.add_argument("--json", type=Path, help="write the full report (incl. out-of-fold predictions by id) here")
    p.add_argument("--on-bad-record", choices=("error", "skip"), default="error")


def run(args) -> int:
    return {"metrics": _metrics, "build": _build, "synth": _synth, "score": _score,
            "baseline": _baseline}[args.oral_cmd](args)


def _console():
    from rich.console import Console

    return Console()


def _metrics(args) -> int:
    from rich.table import Table

    from glmtune.tasks.oral_reading.build import read_text_file
    from glmtune.tasks.oral_reading.parse_xml import parse_any
    from glmtune.tasks.oral_reading.rubric import compute_metrics, metrics_table

    rec = parse_any(read_text_file(args.file), args.text, source=str(args.file))
    m = compute_metrics(rec)
    if args.json:
        out = {"bands": m.bands, "n": m.n, "rate_per_min": float(m.rate_per_min), "pause_ratio": float(m.pause_ratio),
               "completeness": float(m.completeness), "weighted_total": float(m.weighted_total()),
               "ise_style": m.ise_style, "ise_reported": m.ise_reported, "ise_expected": m.ise_expected,
               "rejection": m.rejection,
               "warnings": [str(w) for w in rec.warnings], "partial": m.partial}
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    con = _console()
    t = Table(title=f"{args.file.name} ({rec.source_format})")
    for col in ("指标", "值", "档"):
        t.add_column(col)
    for row in metrics_table(m):
        t.add_row(*row)
    t.add_row("加权总分(无感情)", f"{float(m.weighted_total()):.3f} /5 = {float(m.weighted_total()) * 20:.1f} /100", "")
    for k, v in m.ise_style.items():
        reported = m.ise_reported.get(k)
        shown = f"重算 {v:.2f}"
        if m.rejection:
            shown += f"，拒识×{m.rejection['ise_factor']} = {m.ise_expected[k]:.2f}"
        t.add_row(f"ISE {k}", shown + (f"，ISE {reported:.2f}" if reported is not None else ""), "")
    con.print(t)
    if m.partial:
        con.print("[yellow]data truncated: metrics are partial[/]")
    for w in rec.warnings:
        con.print(f"[dim]{w}[/]")
    return 0


def _build(args) -> int:
    from glmtune.tasks.oral_reading.build import build_dataset, load_inputs_report, load_labels

    items, loaded = load_inputs_report(args.input, args.on_bad_record)
    for line in loaded.lines():
        print(line)
    if args.label_file:
        labels = load_labels(args.label_file)
        for it in items:
            if it.id in labels:
                it.labels, it.remark = labels[it.id]
    report = build_dataset(items, args.out, args.mode, args.labels, args.rejected)
    print(f"wrote {report.written} samples to {args.out}; skipped {len(report.skipped)} without labels")
    if report.rejected:
        done = {"flag": "kept with the rejection in the prompt", "keep": "kept as they are", "drop": "dropped"}
        print("ISE-rejected results: " + ", ".join(f"{v} {done[k]}" for k, v in report.rejected.items()))
    if report.warnings:
        print("parser repairs: " + ", ".join(f"{k}={v}" for k, v in sorted(report.warnings.items())))
    if args.zhipu:
        from glmtune.tasks.oral_reading.zhipu import export

        z = export(args.out, args.zhipu, args.max_tokens)
        print(f"zhipu: wrote {z.written} samples to {args.zhipu}; {len(z.problems)} problems")
        for p in z.problems[:20]:
            print("  " + p, file=sys.stderr)
        return 0 if z.ok else 1
    return 0


def _synth(args) -> int:
    from glmtune.tasks.oral_reading.demo_data import build_demo_dataset, demo_items
    from glmtune.tasks.oral_reading.rubric import ise_style_scores
    from glmtune.tasks.oral_reading.serialize import to_compact, to_xml

    paths = build_demo_dataset(args.out, args.n, args.seed, args.mode, args.test_share, args.labels)
    with (args.out / "ise.jsonl").open("w", encoding="utf-8") as fh:
        for it in demo_items(args.n, args.seed, args.labels):
            row = {"id": it.id, "text": it.text, "ise": to_compact(it.record)}
            if it.labels:
                row["labels"] = it.labels
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            if args.xml:
                (args.out / "xml").mkdir(exist_ok=True)
                scores = ise_style_scores(it.record)  # §2.9 conventions stand in for ISE's own scores
                (args.out / "xml" / f"{it.id}.xml").write_text(to_xml(it.record, scores), "utf-8")
    print(f"train: {paths['train']}\ntest:  {paths['test']}\nise:   {args.out / 'ise.jsonl'}")
    return 0


def _score(args) -> int:
    from rich.table import Table

    from glmtune.tasks.oral_reading.score import score_files

    learner = None
    if args.baseline:
        from glmtune.tasks.oral_reading.build import read_text_file
        from glmtune.tasks.oral_reading.records import OralInputError

        try:
            learner = json.loads(read_text_file(args.baseline))
        except json.JSONDecodeError:
            learner = None
        learner = learner.get("predictions") if isinstance(learner, dict) else None
        if not isinstance(learner, dict):
            raise OralInputError(f"{args.baseline}: not an `oral baseline --json` report (no predictions by id)")
    report = score_files(args.pred, args.ref, learner=learner)
    fmt = (lambda x: "—" if x is None else f"{x:.3f}")
    t = Table(title=f"oral scoring: n={report['n']}, format valid {fmt(report['format_valid_rate'])}")
    cols = ["维度", "exact", "MAE", "PCC", "SCC", "QWK"]
    cols += ["learner exact", "learner QWK"] if learner is not None else []
    cols += ["rubric exact", "rubric QWK", "constant exact"]
    for col in cols:
        t.add_column(col)
    for d, s in report["dimensions"].items():
        rub = report["baselines"].get("rubric", {}).get(d, {})
        const = report["baselines"]["constant"][d]
        lrn = report["baselines"].get("learner", {}).get(d, {})
        row = [d, fmt(s["exact"]), fmt(s["mae"]), fmt(s["pearson"]), fmt(s["spearman"]), fmt(s["qwk"])]
        row += [fmt(lrn.get("exact")), fmt(lrn.get("qwk"))] if learner is not None else []
        t.add_row(*row, fmt(rub.get("exact")), fmt(rub.get("qwk")), fmt(const["exact"]))
    _console().print(t)
    if learner is not None:
        print(f"learner: out-of-fold predictions from {args.baseline} "
              f"({report['baselines']['learner_missing']} reference item(s) without one count as misses)")
    if args.json:
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=2), "utf-8")
        print(f"report: {args.json}")
    return 0


def baseline_table(report: dict, title: str):
    from rich.table import Table

    fmt = (lambda x: "—" if x is None else f"{x:.2f}")
    t = Table(title=title)
    for col in ("维度", "system", "exact", "±1", "MAE", "QWK", "Spearman"):
        t.add_column(col, justify="right")
    for d, systems in report["dimensions"].items():
        for k, (name, s) in enumerate(systems.items()):
            t.add_row(d if k == 0 else "", name, fmt(s["exact"]), fmt(s["within1"]), fmt(s["mae"]), fmt(s["qwk"]),
                      fmt(s["spearman"]), end_section=k == len(systems) - 1)
    return t


def _baseline(args) -> int:
    from glmtune.tasks.oral_reading.baseline import run_baseline, verdict
    from glmtune.tasks.oral_reading.build import load_inputs_report, load_labels

    items, loaded = load_inputs_report(args.data, args.on_bad_record)
    if loaded.skipped or loaded.failed or loaded.renamed:
        for line in loaded.lines():
            print(line)
    if args.label_file:
        labels = load_labels(args.label_file)
        for it in items:
            if it.id in labels:
                it.labels, it.remark = labels[it.id]
    report = run_baseline(items, args.k, args.learner, args.seed, args.pred)
    print(f"oral baseline: {report['n_scored']} items scored ({report['n_labelled']} labelled of {report['n_items']}), "
          f"{report['passages']} passages, {report['folds']}-fold by passage, learner={report['learner']}")
    _console().print(baseline_table(report, "agreement with the labels, per dimension"))
    print(f"labels used: {report['label_scale']}")
    print("conclusion: " + verdict(report["summary"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=2), "utf-8")
        print(f"report: {args.json}")
    return 0
