"""Predictions -> report.json, report.md, scores.jsonl and confusion.png (heat maps), plus a console summary.

The report carries the metric spec versions (`glmtune-text-1`, `glmtune-fields-1`) so `eval compare`
can refuse to line up numbers computed under different definitions (the peers' four incompatible
BLEU-4s are why users cannot compare each other's numbers, LF#2140, PR#4877).
"""

from __future__ import annotations

import time
from collections import Counter
from functools import lru_cache
from pathlib import Path

from glmtune.utils.io import atomic_write_json, atomic_write_text, write_jsonl

__all__ = ["REPORT_VERSION", "build_report", "plot_label", "print_summary", "write_report"]

REPORT_VERSION = 1


def build_report(rows: list[dict], *, field_spec=None, metrics=("text", "fields"), meta: dict | None = None,
                 generation: dict | None = None) -> tuple[dict, list[dict]]:
    """Score prediction rows; return (report, per-sample scores)."""
    from glmtune.evaluate.metrics import TEXT_METRICS, score_texts

    preds = [r.get("prediction") for r in rows]
    refs = [r.get("reference") for r in rows]
    report: dict = {"glmtune_report": REPORT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(meta or {}),
                    "n": len(rows)}
    finish = Counter(r.get("finish_reason") or "?" for r in rows)
    report["generation"] = {
        **{k: v for k, v in (generation or {}).items() if k != "rows"},
        "finish_reasons": dict(finish),
        "truncated_at_max_new_tokens": finish.get("length", 0),
        "request_errors": sum(1 for r in rows if r.get("error")),
        "completion_tokens_mean": (sum(r.get("completion_tokens") or 0 for r in rows) / len(rows)) if rows else None,
    }
    per = [{"id": r["id"], "source": r.get("source")} for r in rows]
    if "text" in metrics:
        text = score_texts(preds, refs)
        for p, s in zip(per, text.pop("per_sample")):
            p.update({k: round(s[k], 4) for k in TEXT_METRICS})
        report["text"] = text
    if "fields" in metrics and field_spec is not None:
        from glmtune.evaluate.fields import score_fields

        fields = score_fields(preds, refs, field_spec)
        for p, s in zip(per, fields.pop("per_sample")):
            p.update({"format_valid": s["valid"], "format_errors": s["errors"]})
        report["fields"] = fields
    from glmtune.registry import task_metrics

    for family, note in task_metrics().items():  # scored by the task's own verb: say where
        if family in metrics:
            report.setdefault("notes", []).append(note)
    return report, per


@lru_cache(maxsize=1)
def _cjk_font() -> str | None:
    from matplotlib import font_manager

    for f in font_manager.fontManager.ttflist:
        if any(k in f.name for k in ("CJK", "WenQuanYi", "SimHei", "Hei", "Song", "Ming", "Droid Sans Fallback")):
            return f.name
    return None


def plot_label(text: str) -> str:
    """Field names are Chinese; without a CJK font matplotlib draws empty boxes, so fall back to pinyin."""
    if text.isascii() or _cjk_font():
        return text
    from pypinyin import lazy_pinyin

    return "".join(lazy_pinyin(text))


def _plot_confusions(cms: dict[str, dict], png: Path) -> Path:
    """One heat map per field, side by side in one PNG (one figure is ~6x faster than six)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if _cjk_font():
        plt.rcParams["font.family"] = [_cjk_font(), "DejaVu Sans"]
    cols = min(3, len(cms))
    rows = -(-len(cms) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), dpi=100, squeeze=False)
    for ax in axes.flat[len(cms):]:
        ax.axis("off")
    for ax, (name, cm) in zip(axes.flat, cms.items()):
        labels, m = [str(x) for x in cm["labels"]], cm["matrix"]
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("reference")
        ax.set_title(plot_label(name))
        top = max((max(r) for r in m), default=0) or 1
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v * 100:.1f}%" if pct else f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def _markdown(report: dict, pngs: dict[str, str]) -> str:
    from glmtune.evaluate.metrics import TEXT_METRICS

    g = report["generation"]
    lines = [f"# Evaluation: {report.get('label', '')}", "",
             f"- model: `{report.get('model', '?')}`", f"- test file: `{report.get('test_file', '?')}` ({report['n']} samples)",
             f"- decoding: max_new_tokens={report.get('max_new_tokens')}, temperature={report.get('temperature')}",
             f"- generation: {g.get('generated', 0)} new, {g.get('resumed', 0)} resumed, "
             f"{_fmt(g.get('predictions_per_s'))} predictions/s; {g['truncated_at_max_new_tokens']} hit max_new_tokens; "
             f"{g['request_errors']} request errors", ""]
    for note in report.get("notes", []):
        lines += [f"> {note}", ""]
    if "text" in report:
        t = report["text"]
        lines += [f"## Text metrics (spec `{t['spec']}`, ×100, mean over samples)", "",
                  "| " + " | ".join(TEXT_METRICS) + " |", "|" + "---|" * len(TEXT_METRICS),
                  "| " + " | ".join(_fmt(t[k]) for k in TEXT_METRICS) + " |", "",
                  f"Empty predictions: {t['empty_predictions']} (scored 0); empty references: {t['empty_references']}. "
                  "`bleu4_char` = ChatGLM-6B ptuning / LLaMA-Factory BLEU-4; `bleu4_word` = ChatGLM3 / GLM-4 "
                  "finetune_demo (÷100).", ""]
    if "fields" in report:
        f = report["fields"]
        lines += [f"## Structured answers (spec `{f['spec']}`, field spec `{f['field_spec']['name']}`)", "",
                  f"Format validity: **{_fmt(f['format_validity'], True)}** ({f['valid']}/{f['n']}); "
                  f"invalid references: {f['invalid_references']}", "",
                  "| field | n | coverage | exact match | MAE | Pearson | Spearman | QWK |", "|---|---|---|---|---|---|---|---|"]
        for name, m in f["fields"].items():
            lines.append(f"| {name} | {m['n']} | {_fmt(m['coverage'], True)} | {_fmt(m['exact_match'], True)} | "
                         f"{_fmt(m.get('mae'))} | {_fmt(m.get('pearson'))} | {_fmt(m.get('spearman'))} | {_fmt(m.get('qwk'))} |")
        if f["errors"]:
            lines += ["", "Most common format errors:", ""] + [f"- {e}: {n}" for e, n in f["errors"].items()]
        for name, m in f["fields"].items():
            cm = m.get("confusion")
            if not cm or not cm["labels"]:
                continue
            lines += ["", f"### Confusion: {name} (rows = reference, columns = predicted)", "",
                      "| ref \\ pred | " + " | ".join(map(str, cm["labels"])) + " |", "|---" * (len(cm["labels"]) + 1) + "|"]
            lines += [f"| **{lab}** | " + " | ".join(map(str, row)) + " |" for lab, row in zip(cm["labels"], cm["matrix"])]
        if pngs:
            lines += ["", f"![confusion matrices]({next(iter(pngs.values()))})"]
    if "forgetting" in report:
        fg = report["forgetting"]
        lines += ["", "## Forgetting check (general prompts)", "",
                  f"Accuracy {_fmt(fg['base_accuracy'], True)} (base) → {_fmt(fg['tuned_accuracy'], True)} (tuned), "
                  f"delta {fg['delta'] * 100:+.1f} points; lost: {', '.join(fg['lost']) or 'none'}"]
    if "base" in report:
        b = report["base"]
        lines += ["", "## Base model on the same test set", ""]
        if "text" in b:
            lines.append("- text: " + ", ".join(f"{k} {_fmt(b['text'][k])}" for k in TEXT_METRICS))
        if "fields" in b:
            lines.append(f"- format validity: {_fmt(b['fields']['format_validity'], True)}")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: dict, per_sample: list[dict]) -> dict[str, Path]:
    """Write report.json, report.md, scores.jsonl and confusion.png (one heat map per field); return paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, str] = {}
    paths: dict[str, Path] = {}
    cms = {name: m["confusion"] for name, m in (report.get("fields") or {}).get("fields", {}).items()
           if m.get("confusion") and m["confusion"]["labels"] and sum(map(sum, m["confusion"]["matrix"]))}
    if cms:
        paths["confusion.png"] = _plot_confusions(cms, out / "confusion.png")
        pngs = dict.fromkeys(cms, "confusion.png")
    report["plots"] = pngs
    paths["report.json"] = atomic_write_json(out / "report.json", report)
    paths["report.md"] = atomic_write_text(out / "report.md", _markdown(report, pngs))
    paths["scores.jsonl"] = write_jsonl(out / "scores.jsonl", per_sample)
    return paths


def print_summary(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from glmtune.evaluate.metrics import TEXT_METRICS

    console = console or Console()
    table = Table(title=f"eval: {report.get('label', '')} ({report['n']} samples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if "text" in report:
        for k in TEXT_METRICS:
            table.add_row(k, _fmt(report["text"][k]))
        table.add_row("empty predictions", str(report["text"]["empty_predictions"]))
    if "fields" in report:
        f = report["fields"]
        table.add_row("format validity", _fmt(f["format_validity"], True))
        for name, m in f["fields"].items():
            extra = f", QWK {_fmt(m['qwk'])}" if m.get("qwk") is not None else ""
            table.add_row(f"{name} exact match", _fmt(m["exact_match"], True) + extra)
    g = report["generation"]
    table.add_row("hit max_new_tokens", str(g["truncated_at_max_new_tokens"]))
    console.print(table)
