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

Nothing is dropped silently (`load_inputs_report`): in a folder every file is read, skipped with a
reason (spreadsheets, audio, sub-folders, unknown types; `.ref` sidecars are consumed) or failed with
a reason (not an ISE result, truncated XML, not UTF-8); in a JSONL every bad line fails with
file:line. `on_bad_record="error"` (default, like `data.on_bad_record`) stops at the first failure
with a one-line `OralInputError`; `"skip"` counts it and goes on. Ids are unique: a file's id is its
stem, XML files first; a later file with a taken stem gets its full file name (listed in `renamed`);
a duplicate id in a JSONL is a failure.
Results ISE rejected (§2.9) are kept with the rejection in the evidence prompt and the record
(`rejected="flag"`, default), kept as they are (`"keep"`) or dropped (`"drop"`), and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from glmtune.tasks.oral_reading.answer import format_answer, parse_answer
from glmtune.tasks.oral_reading.records import IseRecord, OralInputError
from glmtune.tasks.oral_reading.rubric import DIMENSIONS, compute_metrics

MODES = ("raw", "evidence")
REJECTED_POLICIES = ("flag", "keep", "drop")
BAD_RECORD_POLICIES = ("error", "skip")
_RESULT_SUFFIXES = (".xml", ".txt")
_SPREADSHEETS = (".xlsx", ".xls", ".xlsm", ".ods", ".csv")
_AUDIO = (".pcm", ".wav", ".mp3", ".m4a", ".flac", ".ogg", ".amr", ".speex")


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
    skipped: list[str] = field(default_factory=list)  # ids without a (complete) teacher label
    warnings: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # policy -> count of ISE-rejected results


@dataclass
class LoadReport:
    """What happened to every input file (folder) or line (JSONL)."""

    source: str = ""
    read: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): not an input by design
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file or file:line, reason)
    renamed: dict[str, str] = field(default_factory=dict)  # file -> id, when its stem was taken

    def lines(self) -> list[str]:
        out = [f"{self.source}: {len(self.read)} read, {len(self.skipped)} skipped, {len(self.failed)} failed"]
        out += [f"  skipped {name}: {why}" for name, why in self.skipped]
        out += [f"  failed  {name}: {why}" for name, why in self.failed]
        out += [f"  renamed {name}: id {new!r} (its stem is another file's id)" for name, new in self.renamed.items()]
        return out


def read_text_file(path: Path) -> str:
    """UTF-8 (with or without BOM) text, or an `OralInputError` naming the file."""
    try:
        data = Path(path).read_bytes()
        if data.startswith(b"PK\x03\x04"):
            raise OralInputError(f"{path}: a ZIP container (an .xlsx or other Office file), not an ISE result: "
                                 "give the ISE XML or the compact text")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise OralInputError(f"{path}: not UTF-8 text (byte {err.start}): a binary file, not an ISE result") from None
    except OSError as err:
        raise OralInputError(f"{path}: cannot read ({err.strerror})") from None


def _reason(err: OralInputError, source: str) -> str:
    msg = str(err)
    return msg[len(source) + 2:] if msg.startswith(source + ": ") else msg


def _skip_reason(f: Path, stems: set[str]) -> str | None:
    """Why a folder entry is not read (None: it is read)."""
    suffix = f.suffix.lower()
    if f.is_dir():
        return "folder: not searched (give it as its own INPUT)"
    if f.name.startswith("."):
        return "hidden file"
    if suffix in _RESULT_SUFFIXES:
        return None
    if suffix == ".ref":
        return "" if f.stem in stems else "passage sidecar (.ref) without a result file"
    if suffix in _SPREADSHEETS:
        return f"spreadsheet ({suffix}) is not read: give the ISE XML or the compact text"
    if suffix in _AUDIO:
        return f"audio ({suffix}): ISE results only"
    if suffix in (".jsonl", ".json"):
        return f"{suffix} file: give it as the INPUT itself"
    return f"unsupported file type ({suffix or 'no extension'}): ISE results are .xml or .txt"


def _fail(report: LoadReport, on_bad_record: str, where: str, err: OralInputError, source: str) -> None:
    if on_bad_record == "error":
        raise OralInputError(f"{err} (--on-bad-record skip builds without it and counts it)")
    report.failed.append((where, _reason(err, source)))


def load_folder_report(path: Path, on_bad_record: str = "error") -> tuple[list[Item], LoadReport]:
    from glmtune.tasks.oral_reading.parse_xml import parse_any

    path = Path(path)
    report = LoadReport(str(path))
    entries = sorted(path.iterdir(), key=lambda f: (f.suffix.lower() != ".xml", f.name))
    stems = {f.stem for f in entries if f.suffix.lower() in _RESULT_SUFFIXES}
    items: list[Item] = []
    ids: set[str] = set()
    for f in entries:
        why = _skip_reason(f, stems)
        if why == "":
            continue  # a .ref sidecar, read with its result file
        if why is not None:
            report.skipped.append((f.name, why))
            continue
        try:
            data = read_text_file(f)
            ref = f.with_suffix(".ref")
            text = read_text_file(ref).strip() if ref.exists() else None
            rec = parse_any(data, text, source=str(f))
        except OralInputError as err:
            _fail(report, on_bad_record, f.name, err, str(f))
            continue
        item_id = f.stem
        if item_id in ids:
            item_id = f.name
            report.renamed[f.name] = item_id
        ids.add(item_id)
        report.read.append(f.name)
        items.append(Item(item_id, rec.text, rec, None if rec.source_format == "xml" else data))
    report.skipped.sort()
    return items, report


def load_jsonl_report(path: Path, on_bad_record: str = "error") -> tuple[list[Item], LoadReport]:
    from glmtune.tasks.oral_reading.parse_xml import parse_any

    path = Path(path)
    report = LoadReport(str(path))
    items: list[Item] = []
    ids: set[str] = set()
    for n, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        try:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise OralInputError(f"{path}:{n}: bad JSON ({err.msg}, column {err.colno})") from None
            if not isinstance(obj, dict):
                raise OralInputError(f"{path}:{n}: expected an object with id, text and ise")
            item_id = str(obj.get("id", n))
            data = obj.get("ise") or obj.get("xml")
            if not isinstance(data, str) or not data.strip():
                raise OralInputError(f"{path}:{n}: field ise (or xml) is missing or empty")
            if item_id in ids:
                raise OralInputError(f"{path}:{n}: duplicate id {item_id!r}")
            rec = parse_any(data, obj.get("text"), source=f"{path}:{n}: field ise (id {item_id})")
        except OralInputError as err:
            _fail(report, on_bad_record, where, err, f"{path}:{n}")
            continue
        try:
            labels, remark = _labels_from(obj)
        except OralInputError as err:
            _fail(report, on_bad_record, where, OralInputError(f"{path}:{n}: id {item_id}: {err}"),
                  f"{path}:{n}")
            continue
        ids.add(item_id)
        report.read.append(where)
        items.append(Item(item_id, rec.text, rec, None if rec.source_format == "xml" else data, labels, remark))
    return items, report


def load_inputs_report(path: Path, on_bad_record: str = "error") -> tuple[list[Item], LoadReport]:
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {on_bad_record!r}")
    path = Path(path)
    if not path.exists():
        raise OralInputError(f"{path}: no such file or folder")
    return (load_folder_report if path.is_dir() else load_jsonl_report)(path, on_bad_record)


def _label_value(v) -> int:
    """A teacher score must be an integer 1-5 (4 and "4" and 4.0 are fine; 4.5, 0, 6 and "x" are not)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if not (f == f and f.is_integer() and 1 <= f <= 5):
        raise OralInputError(f"label {v!r} is not an integer 1-5")
    return int(f)


def _labels_from(obj: dict) -> tuple[dict[str, int] | None, str | None]:
    if isinstance(obj.get("labels"), dict):
        return {d: _label_value(obj["labels"][d]) for d in DIMENSIONS if d in obj["labels"]}, obj.get("remark")
    if isinstance(obj.get("answer"), str):
        scores, remark, _ = parse_answer(obj["answer"])
        return scores, remark
    if all(d in obj for d in DIMENSIONS):
        return {d: _label_value(obj[d]) for d in DIMENSIONS}, obj.get("评语")
    return None, None


def load_inputs(path: Path, on_bad_record: str = "error") -> list[Item]:
    return load_inputs_report(path, on_bad_record)[0]


def load_labels(path: Path) -> dict[str, tuple[dict[str, int], str | None]]:
    out = {}
    for n, line in enumerate(read_text_file(path).splitlines(), 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise OralInputError(f"{path}:{n}: bad JSON ({err.msg}, column {err.colno})") from None
            if not isinstance(obj, dict) or "id" not in obj:
                raise OralInputError(f"{path}:{n}: expected an object with id and labels (or answer)")
            try:
                labels, remark = _labels_from(obj)
            except OralInputError as err:
                raise OralInputError(f"{path}:{n}: id {obj['id']}: {err}") from None
            if labels is not None:
                out[str(obj["id"])] = (labels, remark)
    return out


def build_sample(item: Item, mode: str = "evidence", labels: str = "rubric", rejected: str = "flag") -> dict | None:
    """One messages record, or None when teacher labels are asked for and missing/incomplete.

    The evidence system prompt states the scale of the target: 1-5 for teacher labels, 5/3/1 for rubric bands."""
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
    if rejected not in REJECTED_POLICIES:
        raise ValueError(f"rejected must be one of {REJECTED_POLICIES}, got {rejected!r}")
    if mode == "raw":
        if item.raw is not None:
            msgs = raw_messages(text, item.raw, item.record.source_format)
        else:
            msgs = raw_messages(text, to_compact(item.record))
    else:
        msgs = evidence_messages(text, m, scale=labels, flag_rejected=rejected == "flag")
    msgs.append({"role": "assistant", "content": format_answer(target, remark)})
    out = {"id": item.id, "messages": msgs, "rubric": dict(m.bands)}
    if m.rejection and rejected == "flag":
        out["rejected"] = m.rejection
    return out


def build_dataset(items: list[Item], out: Path, mode: str = "evidence", labels: str = "rubric",
                  rejected: str = "flag") -> BuildReport:
    report = BuildReport()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for item in items:
            for w in item.record.warnings:
                report.warnings[w.kind] = report.warnings.get(w.kind, 0) + 1
            if item.record.rejected:
                report.rejected[rejected] = report.rejected.get(rejected, 0) + 1
                if rejected == "drop":
                    continue
            sample = build_sample(item, mode, labels, rejected)
            if sample is None:
                report.skipped.append(item.id)
                continue
            fh.write(json.dumps(sample, ensure_ascii=False) + "\n")
            report.written += 1
    return report
