"""Dataset builder: ISE results (+ optional teacher labels) → `{"messages": [system, user, assistant]}` JSONL.

Inputs (`load_inputs`):
- a JSONL file, one item per line: `{"id", "text", "ise": "<compact string or XML>"}` (optionally
  `"labels": {"语速": 3, …}` or `"answer": "语速:3;…"` with the teacher's scores);
- or a directory of `*.xml` (text = the XML's content attribute) and `*.txt` compact files, with
  the passage in a sidecar `<stem>.ref` file when the format does not carry it.
Labels (`labels="teacher"`): from the item or a labels JSONL (`{"id", "labels"|"answer"|dimension keys}`);
items without a teacher label are reported and skipped. `labels="rubric"`: the engine's bands (§4).
Each output record carries `id` and `rubric` (the engine's bands, for the scorer's baseline) next to
`messages`; `zhipu.export` strips them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from glmtune.tasks.oral_reading.answer import format_answer, parse_answer
from glmtune.tasks.oral_reading.records import IseRecord
from glmtune.tasks.oral_reading.rubric import DIMENSIONS, compute_metrics

MODES = ("raw", "evidence")


@dataclass
class Item:
    id: str
    text: str | None
    record: IseRecord
    raw: str | None = None  # the original compact string, kept verbatim for raw mode
    labels: dict[str, int] | None = None
    remark: str | None = None


@dataclass
class BuildReport:
    written: int = 0
    skipped: list[str] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)


def _labels_from(obj: dict) -> tuple[dict[str, int] | None, str | None]:
    if isinstance(obj.get("labels"), dict):
        return {d: int(obj["labels"][d]) for d in DIMENSIONS if d in obj["labels"]}, obj.get("remark")
    if isinstance(obj.get("answer"), str):
        scores, remark, _ = parse_answer(obj["answer"])
        return scores, remark
    if all(d in obj for d in DIMENSIONS):
        return {d: int(obj[d]) for d in DIMENSIONS}, obj.get("评语")
    return None, None


def load_inputs(path: Path) -> list[Item]:
    from glmtune.tasks.oral_reading.parse_xml import parse_any

    path = Path(path)
    items: list[Item] = []
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.suffix not in (".xml", ".txt"):
                continue
            data = f.read_text("utf-8")
            ref = f.with_suffix(".ref")
            text = ref.read_text("utf-8").strip() if ref.exists() else None
            rec = parse_any(data, text)
            items.append(Item(f.stem, rec.text, rec, None if f.suffix == ".xml" else data))
        return items
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        data = obj.get("ise") or obj.get("xml") or ""
        rec = parse_any(data, obj.get("text"))
        labels, remark = _labels_from(obj)
        items.append(Item(str(obj.get("id", n)), rec.text, rec, None if data.lstrip().startswith("<") else data,
                          labels, remark))
    return items


def load_labels(path: Path) -> dict[str, tuple[dict[str, int], str | None]]:
    out = {}
    for line in Path(path).read_text("utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            labels, remark = _labels_from(obj)
            if labels is not None:
                out[str(obj["id"])] = (labels, remark)
    return out


def build_sample(item: Item, mode: str = "evidence", labels: str = "rubric") -> dict | None:
    """One messages record, or None when teacher labels are asked for and missing/incomplete."""
    from glmtune.tasks.oral_reading.prompts import evidence_messages, raw_messages
    from glmtune.tasks.oral_reading.serialize import to_compact

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    m = compute_metrics(item.record, item.text)
    if labels == "rubric":
        target, remark = m.bands, None
    elif labels == "teacher":
        if not item.labels or any(d not in item.labels for d in DIMENSIONS):
            return None
        target, remark = item.labels, item.remark
    else:
        raise ValueError(f"labels must be teacher or rubric, got {labels!r}")
    text = item.text or ""
    if mode == "raw":
        msgs = raw_messages(text, item.raw if item.raw is not None else to_compact(item.record))
    else:
        msgs = evidence_messages(text, m)
    msgs.append({"role": "assistant", "content": format_answer(target, remark)})
    return {"id": item.id, "messages": msgs, "rubric": dict(m.bands)}


def build_dataset(items: list[Item], out: Path, mode: str = "evidence", labels: str = "rubric") -> BuildReport:
    report = BuildReport()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for item in items:
            sample = build_sample(item, mode, labels)
            for w in item.record.warnings:
                report.warnings[w.kind] = report.warnings.get(w.kind, 0) + 1
            if sample is None:
                report.skipped.append(item.id)
                continue
            fh.write(json.dumps(sample, ensure_ascii=False) + "\n")
            report.written += 1
    return report
