"""Report files, markdown content and `eval compare` (table, markdown, PNG, spec mismatch note)."""

import json

import pytest

from glmtune.evaluate.compare import compare_reports, write_comparison
from glmtune.evaluate.fields import FieldSpec
from glmtune.evaluate.report import build_report, plot_label, write_report

REF = "语速:3;停顿:4;声母:5;韵母:2;声调:1;完整度:5;评语:好"


def _rows(preds):
    return [{"id": f"s{i}", "source": f"t.jsonl:{i + 1}", "prediction": p, "reference": REF,
             "finish_reason": "length" if i == 0 else "stop", "completion_tokens": 4} for i, p in enumerate(preds)]


def _write(tmp_path, name, preds):
    rep, per = build_report(_rows(preds), field_spec=FieldSpec.builtin("oral"),
                            meta={"label": name, "model": f"dir:{name}", "max_new_tokens": 32, "temperature": 0.0})
    paths = write_report(tmp_path / name, rep, per)
    return rep, paths


def test_report_files_and_contents(tmp_path):
    rep, paths = _write(tmp_path, "tuned", [REF, "", "语速:3;停顿:4"])
    for f in ("report.json", "report.md", "scores.jsonl"):
        assert (tmp_path / "tuned" / f).stat().st_size > 0
    data = json.loads((tmp_path / "tuned" / "report.json").read_text("utf-8"))
    assert data["text"]["spec"] == "glmtune-text-1" and data["fields"]["spec"] == "glmtune-fields-1"
    assert data["fields"]["format_validity"] == pytest.approx(1 / 3)
    assert data["text"]["empty_predictions"] == 1
    assert data["generation"]["truncated_at_max_new_tokens"] == 1
    # one heat map per int field with any pair (评语 is str: none), all in confusion.png
    assert data["plots"] == dict.fromkeys(["语速", "停顿", "声母", "韵母", "声调", "完整度"], "confusion.png")
    assert paths["confusion.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "tuned" / "report.md").read_text("utf-8")
    assert "Format validity: **33.3%** (1/3)" in md and "### Confusion: 语速" in md
    scores = [json.loads(x) for x in (tmp_path / "tuned" / "scores.jsonl").read_text("utf-8").splitlines()]
    assert [s["format_valid"] for s in scores] == [True, False, False] and scores[1]["bleu4_char"] == 0.0


def test_compare_table_markdown_png(tmp_path):
    _write(tmp_path, "base", ["", "你好", "语速:1"])
    _write(tmp_path, "tuned", [REF, REF, "语速:3;停顿:4"])
    paths = write_comparison([tmp_path / "base", tmp_path / "tuned" / "report.json"], tmp_path / "cmp")
    md = paths["compare.md"].read_text("utf-8")
    assert "| metric | base | tuned |" in md
    assert "| format validity | 0.00 | 66.67 |" in md
    assert paths["compare.png"].read_bytes()[:4] == b"\x89PNG"
    rows = json.loads(paths["compare.json"].read_text("utf-8"))["rows"]
    assert {r["metric"] for r in rows} >= {"bleu4_char", "语速 exact match", "语速 QWK", "samples"}


def test_compare_flags_different_metric_specs(tmp_path):
    _write(tmp_path, "a", [REF])
    _write(tmp_path, "b", [REF])
    p = tmp_path / "b" / "report.json"
    data = json.loads(p.read_text("utf-8"))
    data["text"]["spec"] = "glmtune-text-0"
    p.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    _, rows, notes = compare_reports([tmp_path / "a", tmp_path / "b"])
    assert "bleu4_char!" in [m for m, _, _ in rows]
    assert any("not comparable" in n for n in notes)
    with pytest.raises(FileNotFoundError):
        compare_reports([tmp_path / "missing"])


def test_plot_label_falls_back_to_pinyin_without_cjk_font():
    from glmtune.evaluate import report

    label = plot_label("语速")
    assert label == ("语速" if report._cjk_font() else "yusu")
    assert plot_label("qwk") == "qwk"
