"""Readers for the chat formats GLM users have, all producing `Conversation`.

Formats (auto-detected per record, or fixed by `data.format`):
- messages:      {"messages": [{"role": "system|user|assistant|observation", "content": "..."}]}  (OpenAI, seed 000)
- conversations: {"conversations": [{"role": ..., "content": ...}]}                              (ChatGLM3 finetune_demo)
- sharegpt:      {"conversations": [{"from": "human|gpt|system|observation", "value": ...}], "system": ...}
- alpaca:        {"instruction", "input", "output", "system", "history": [[q, a], ...]}
- columns:       prompt/response/history/system under user-chosen names (ChatGLM-6B P-Tuning main.py)

Every problem becomes a `DataIssue` naming file, line and field; nothing is dropped without one.

>>> conv, issues = parse_record({"instruction": "2+3?", "output": "5"}, "alpaca", Source("a.jsonl", 1))
>>> [(m["role"], m["content"]) for m in conv.messages], issues
([('user', '2+3?'), ('assistant', '5')], [])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ROLES = ("system", "user", "assistant", "observation")
ROLE_ALIASES = {"tool": "observation", "function": "observation", "human": "user", "gpt": "assistant",
                "bot": "assistant", "model": "assistant", "function_call": "assistant"}
FORMATS = ("messages", "conversations", "sharegpt", "alpaca", "columns")


@dataclass(frozen=True)
class Source:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Conversation:
    messages: list[dict]  # [{"role": ..., "content": ...}], roles from ROLES
    source: Source
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DataIssue:
    source: Source
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.field}: {self.message}"


class DataError(ValueError):
    def __init__(self, issues: list[DataIssue]):
        self.issues = issues
        shown = "\n".join(f"  {i}" for i in issues[:20])
        more = f"\n  ... and {len(issues) - 20} more" if len(issues) > 20 else ""
        super().__init__(f"{len(issues)} bad record(s):\n{shown}{more}")


def detect_format(rec: dict, columns=None) -> str | None:
    if "messages" in rec:
        return "messages"
    convs = rec.get("conversations")
    if isinstance(convs, list):
        first = next((t for t in convs if isinstance(t, dict)), {})
        return "sharegpt" if "from" in first else "conversations"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    prompt_col = columns.prompt if columns is not None else "prompt"
    if prompt_col in rec:
        return "columns"
    return None


def _turns_from_pairs(history, fld: str, src: Source, issues: list[DataIssue]) -> list[dict]:
    out: list[dict] = []
    if history in (None, ""):
        return out
    if not isinstance(history, list):
        issues.append(DataIssue(src, fld, "must be a list of [question, answer] pairs"))
        return out
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            issues.append(DataIssue(src, f"{fld}[{i}]", "must be a [question, answer] pair"))
            continue
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


def _role_list(turns, fld: str, role_key: str, content_key: str, src: Source, issues: list[DataIssue]) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        issues.append(DataIssue(src, fld, "must be a non-empty list of turns"))
        return []
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            issues.append(DataIssue(src, f"{fld}[{i}]", "turn must be an object"))
            continue
        role = t.get(role_key)
        role = ROLE_ALIASES.get(role, role)
        if role not in ROLES:
            issues.append(DataIssue(src, f"{fld}[{i}].{role_key}", f"unknown role {t.get(role_key)!r}; expected one of {list(ROLES)}"))
            continue
        if content_key not in t:
            issues.append(DataIssue(src, f"{fld}[{i}].{content_key}", "missing"))
            continue
        out.append({"role": role, "content": t[content_key], "_field": f"{fld}[{i}].{content_key}"})
    return out


def _check_turns(msgs: list[dict], src: Source, issues: list[DataIssue]) -> None:
    """Roles alternate user -> assistant (observation may follow an assistant tool call); system only first."""
    expect_user = True
    for i, m in enumerate(msgs):
        fld = m.get("_field", f"messages[{i}]")
        is_text = isinstance(m["content"], str)
        if not is_text:
            issues.append(DataIssue(src, fld, f"content must be a string, got {type(m['content']).__name__}"))
        role = m["role"]
        if role == "system":
            if i != 0:
                issues.append(DataIssue(src, fld, "system turn must come first"))
            continue
        if role == "assistant":
            if expect_user:
                issues.append(DataIssue(src, fld, "wrong turn order: assistant turn without a user turn before it"))
            if is_text and not m["content"].strip():
                issues.append(DataIssue(src, fld, "empty assistant turn"))
            expect_user = True
        else:  # user / observation
            if not expect_user and role == "user":
                issues.append(DataIssue(src, fld, "wrong turn order: two user turns in a row"))
            expect_user = False
    if not any(m["role"] == "assistant" for m in msgs):
        issues.append(DataIssue(src, "messages", "no assistant turn to learn from"))
    elif msgs and msgs[-1]["role"] != "assistant":
        issues.append(DataIssue(src, msgs[-1].get("_field", "messages"), "conversation must end with an assistant turn"))


def parse_record(rec, fmt: str, src: Source, columns=None) -> tuple[Conversation | None, list[DataIssue]]:
    issues: list[DataIssue] = []
    if not isinstance(rec, dict):
        return None, [DataIssue(src, "<record>", f"expected a JSON object, got {type(rec).__name__}")]
    if fmt == "auto":
        fmt = detect_format(rec, columns)
        if fmt is None:
            return None, [DataIssue(src, "<record>", "unrecognised format: expected messages, conversations, "
                                    "instruction/output or prompt/response keys")]
    msgs: list[dict] = []
    if fmt == "messages":
        msgs = _role_list(rec.get("messages"), "messages", "role", "content", src, issues)
    elif fmt == "conversations":
        msgs = _role_list(rec.get("conversations"), "conversations", "role", "content", src, issues)
    elif fmt == "sharegpt":
        msgs = _role_list(rec.get("conversations"), "conversations", "from", "value", src, issues)
        if rec.get("system"):
            msgs.insert(0, {"role": "system", "content": rec["system"], "_field": "system"})
    elif fmt == "alpaca":
        for key in ("instruction", "output"):
            if key not in rec:
                issues.append(DataIssue(src, key, "missing"))
        if not issues:
            if rec.get("system"):
                msgs.append({"role": "system", "content": rec["system"], "_field": "system"})
            msgs += _turns_from_pairs(rec.get("history"), "history", src, issues)
            inp = rec.get("input") or ""
            instr = rec["instruction"]
            prompt = f"{instr}\n{inp}" if isinstance(instr, str) and isinstance(inp, str) and inp else instr
            msgs += [{"role": "user", "content": prompt, "_field": "instruction"},
                     {"role": "assistant", "content": rec["output"], "_field": "output"}]
    elif fmt == "columns":
        cm = columns
        for key in (cm.prompt, cm.response):
            if key not in rec:
                issues.append(DataIssue(src, key, "missing"))
        if not issues:
            if cm.system and rec.get(cm.system):
                msgs.append({"role": "system", "content": rec[cm.system], "_field": cm.system})
            if cm.history:
                msgs += _turns_from_pairs(rec.get(cm.history), cm.history, src, issues)
            msgs += [{"role": "user", "content": rec[cm.prompt], "_field": cm.prompt},
                     {"role": "assistant", "content": rec[cm.response], "_field": cm.response}]
    else:
        raise ValueError(f"unknown data.format {fmt!r}; choose auto or one of {FORMATS}")
    if not issues:
        _check_turns(msgs, src, issues)
    if issues:
        return None, issues
    meta = {"format": fmt}
    if "id" in rec:
        meta["id"] = rec["id"]
    return Conversation([{"role": m["role"], "content": m["content"]} for m in msgs], src, meta), []


def iter_records(path: str | Path) -> Iterator[tuple[Source, object | DataIssue]]:
    """Yield (source, record-or-issue) for a JSONL file (line numbers) or a JSON array file (record index)."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            arr = json.loads(text)
        except json.JSONDecodeError as e:
            yield Source(name, e.lineno), DataIssue(Source(name, e.lineno), "<json>", f"bad JSON: {e.msg}")
            return
        for i, rec in enumerate(arr, 1):
            yield Source(name, i), rec
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        src = Source(name, lineno)
        try:
            yield src, json.loads(line)
        except json.JSONDecodeError as e:
            yield src, DataIssue(src, "<json>", f"bad JSON: {e.msg} (column {e.colno})")


def read_file(path: str | Path, fmt: str = "auto", columns=None) -> tuple[list[Conversation], list[DataIssue]]:
    """Read every record; return good conversations and every issue (never raises on bad records)."""
    if columns is None:
        from glmtune.config.schema import ColumnMap

        columns = ColumnMap()
    convs, issues = [], []
    for src, rec in iter_records(path):
        if isinstance(rec, DataIssue):
            issues.append(rec)
            continue
        conv, errs = parse_record(rec, fmt, src, columns)
        issues += errs
        if conv is not None:
            convs.append(conv)
    return convs, issues
