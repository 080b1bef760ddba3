"""`glmtune eval compare A B ...`: several report.json side by side (rich table, markdown, bar chart PNG).

Only numbers computed under the same metric spec are lined up; a metric whose spec differs between
reports is shown with a `!` and a note, because a BLEU-4 from one definition says nothing about
another (ChatGLM-6B's character BLEU-4 and GLM-4's word BLEU-4 share a name, not a scale).
"""

from __future__ import annotations

import json
from pathlib import Path

from glmtune.errors import InputError, MissingFileError
from glmtune.utils.io import atomic_write_json, atomic_write_text

__all__ = ["compare_reports", "comparison_rows", "load_report", "write_comparison"]


def load_report(ref: str | Path) -> dict:
    """A report.json path or an eval output folder holding one; label defaults to the folder name."""
    p = Path(ref)
    if p.is_dir():
        p = p / "report.json"
    if not p.exists():
        raise MissingFileError(f"{ref}: no report.json there (run `glmtune eval ... --out DIR` first)")
    try:
        rep = json.loads(p.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{p}: not a glmtune eval report ({err})") from None
    if not isinstance(rep, dict) or "glmtune_report" not in rep:
        raise InputError(f"{p}: not a glmtune eval report")
    rep.setdefault("label", p.parent.name)
    rep["_path"] = str(p)
    return rep


def comparison_rows(reports: list[dict]) -> tuple[list[tuple[str, str, list]], list[str]]:
    """[(metric, unit, [value per report])] and notes. Units: "x100" (0-100 scale) or "" (raw)."""
    from glmtune.evaluate.metrics import TEXT_METRICS

    rows: list[tuple[str, str, list]] = []
    notes: list[str] = []

    def spec_mark(section: str) -> str:
        specs = {r[section]["spec"] for r in reports if section in r}
        if len(specs) > 1:
            notes.append(f"{section} metrics come from different specs {sorted(specs)}: not comparable")
            return "!"
        return ""

    if any("text" in r for r in reports):
        mark = spec_mark("text")
        for k in TEXT_METRICS:
            rows.append((k + mark, "x100", [r.get("text", {}).get(k) for r in reports]))
    if any("fields" in r for r in reports):
        mark = spec_mark("fields")
        rows.append(("format validity" + mark, "x100",
                     [_pct(r.get("fields", {}).get("format_validity")) for r in reports]))
        names: list[str] = []
        for r in reports:
            names += [n for n in r.get("fields", {}).get("fields", {}) if n not in names]
        for n in names:
            vals = [r.get("fields", {}).get("fields", {}).get(n, {}) for r in reports]
            rows.append((f"{n} exact match{mark}", "x100", [_pct(v.get("exact_match")) for v in vals]))
            if any(v.get("qwk") is not None for v in vals):
                rows.append((f"{n} QWK{mark}", "", [v.get("qwk") for v in vals]))
            if any(v.get("mae") is not None for v in vals):
                rows.append((f"{n} MAE{mark}", "", [v.get("mae") for v in vals]))
    if any("forgetting" in r for r in reports):
        rows.append(("general accuracy (forgetting set)", "x100",
                     [_pct(r.get("forgetting", {}).get("tuned_accuracy")) for r in reports]))
        rows.append(("general accuracy change vs base (points)", "x100",
                     [_pct(r.get("forgetting", {}).get("delta")) for r in reports]))
    rows.append(("samples", "", [r.get("n") for r in reports]))
    return rows, notes


def _pct(v):
    return None if v is None else 100.0 * v


def _cell(v) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _bar_chart(reports: list[dict], rows, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glmtune.evaluate.report import plot_label

    scaled = [(m, vals) for m, unit, vals in rows if unit == "x100" and any(v is not None for v in vals)]
    k = len(reports)
    width = 0.8 / max(k, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(scaled) + 2), 4.5), dpi=110)
    for j, rep in enumerate(reports):
        xs = [i + (j - (k - 1) / 2) * width for i in range(len(scaled))]
        ax.bar(xs, [vals[j] or 0.0 for _, vals in scaled], width, label=plot_label(rep["label"]))
    ax.set_xticks(range(len(scaled)), [plot_label(m) for m, _ in scaled], rotation=30, ha="right")
    ax.set_ylabel("score (0-100)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("glmtune eval compare")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def compare_reports(refs: list[str | Path]) -> tuple[list[dict], list, list[str]]:
    reports = [load_report(r) for r in refs]
    labels = [r["label"] for r in reports]
    for i, lab in enumerate(labels):  # two runs both named "eval" must stay distinguishable
        if labels.count(lab) > 1:
            reports[i]["label"] = f"{lab} ({Path(reports[i]['_path']).parent.parent.name or i})"
    rows, notes = comparison_rows(reports)
    return reports, rows, notes


def write_comparison(refs: list[str | Path], out_dir: str | Path, console=None) -> dict[str, Path]:
    """Render the table to the console and write compare.md, compare.json and compare.png under out_dir."""
    from rich.console import Console
    from rich.table import Table

    reports, rows, notes = compare_reports(refs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title="glmtune eval compare")
    table.add_column("metric")
    for r in reports:
        table.add_column(r["label"], justify="right")
    md = ["# Eval comparison", "", "| metric | " + " | ".join(r["label"] for r in reports) + " |",
          "|---" * (len(reports) + 1) + "|"]
    for metric, _, vals in rows:
        nums = [v for v in vals if isinstance(v, (int, float))]
        best = max(nums) if nums and "MAE" not in metric and metric != "samples" else None
        cells = [_cell(v) for v in vals]
        table.add_row(metric, *[f"[bold]{c}[/bold]" if best is not None and v == best and len(nums) > 1 else c
                                for c, v in zip(cells, vals)])
        md.append(f"| {metric} | " + " | ".join(cells) + " |")
    md += [""] + [f"> {n}" for n in notes] + ["", "Sources:", ""] + [f"- {r['label']}: `{r['_path']}` (model `{r.get('model', '?')}`)"
                                                                       for r in reports]
    (console or Console()).print(table)
    for n in notes:
        (console or Console()).print(f"note: {n}", style="yellow", markup=False)
    png = _bar_chart(reports, rows, out / "compare.png")
    md += ["", "![comparison](compare.png)"]
    return {
        "compare.md": atomic_write_text(out / "compare.md", "\n".join(md) + "\n"),
        "compare.json": atomic_write_json(out / "compare.json", {"reports": [r["_path"] for r in reports],
                                                                 "labels": [r["label"] for r in reports],
                                                                 "rows": [{"metric": m, "unit": u, "values": v} for m, u, v in rows],
                                                                 "notes": notes}),
        "compare.png": png,
    }
