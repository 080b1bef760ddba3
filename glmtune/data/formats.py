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

import codecs
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from glmtune.config.load import ConfigError

ROLES = ("system", "user", "assistant", "observation")
ROLE_ALIASES = {"tool": "observation", "function": "observation", "human": "user", "gpt": "assistant",
                "bot": "assistant", "model": "assistant", "function_call": "assistant"}
FORMATS = ("messages", "conversations", "sharegpt", "alpaca", "columns")


@dataclass(frozen=True)
class Source:
    file: str
    line: int

    def __str__(self) -> str:  # line 0: the file as a whole (missing, empty)
        return f"{self.file}:{self.line}" if self.line else self.file


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
        return f"{self.source}: {self.field}: {self.message}" if self.field else f"{self.source}: {self.message}"


class DataError(ConfigError):
    """Bad data, one `file:line: field: message` per issue; the CLI prints it without a traceback."""

    def __init__(self, issues: list[DataIssue]):
        self.issues = issues
        if len(issues) == 1 and not issues[0].source.line:  # the file itself: missing, a folder, no records
            super().__init__(str(issues[0]))
            return
        shown = "\n".join(f"  {i}" for i in issues[:20])
        more = f"\n  ... and {len(issues) - 20} more" if len(issues) > 20 else ""
        super().__init__(f"{len(issues)} bad record(s):\n{shown}{more}")


def _short(value, limit: int = 60) -> str:
    """repr() of a user's value for a message, cut to `limit` characters (records can be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def text_problem(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8 (a lone surrogate such as JSON's "\\ud800"), or None.

    >>> text_problem("ok"), text_problem("x\\ud800")
    (None, "lone surrogate '\\\\ud800' at character 1: not valid Unicode text")
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"lone surrogate {ascii(text[e.start])} at character {e.start}: not valid Unicode text"
    return None


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
        if not isinstance(role, str):
            issues.append(DataIssue(src, f"{fld}[{i}].{role_key}", f"role must be a string, got "
                                    f"{type(role).__name__ if role is not None else 'nothing'}"))
            continue
        role = ROLE_ALIASES.get(role, role)
        if role not in ROLES:
            issues.append(DataIssue(src, f"{fld}[{i}].{role_key}", f"unknown role {_short(t.get(role_key))}; "
                                    f"expected one of {list(ROLES)}"))
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
        elif (bad := text_problem(m["content"])) is not None:
            issues.append(DataIssue(src, fld, bad))  # the tokenizer would raise on it mid-training
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
            if not isinstance(inp, str):  # else it would be left out of the prompt without a word
                issues.append(DataIssue(src, "input", f"must be a string, got {type(inp).__name__}"))
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
        raise ConfigError(f"unknown data format {fmt!r}; choose auto or one of {list(FORMATS)}")
    if not issues:
        _check_turns(msgs, src, issues)
    if isinstance(rec.get("id"), str) and (bad := text_problem(rec["id"])) is not None:
        issues.append(DataIssue(src, "id", bad))
    if issues:
        return None, issues
    meta = {"format": fmt}
    if "id" in rec:
        meta["id"] = rec["id"]
    return Conversation([{"role": m["role"], "content": m["content"]} for m in msgs], src, meta), []


def _not_utf8(raw: bytes, at: int) -> str:
    """Message for a line that is not UTF-8; a guess at the encoding when the line decodes as GBK/GB18030."""
    try:
        raw.decode("gb18030")
        return "not UTF-8 (looks like GBK?): re-save the file as UTF-8 (e.g. iconv -f GBK -t UTF-8)"
    except UnicodeDecodeError:
        return f"not UTF-8 (byte 0x{raw[at]:02x} at byte {at + 1} of the line)"


def _loads(text: str, src: Source) -> object | DataIssue:
    """One JSON value, or the issue saying why not (never raises: deep nesting and huge numbers included)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return DataIssue(src, "<json>", f"bad JSON: {e.msg} (column {e.colno})")
    except (RecursionError, ValueError) as e:
        return DataIssue(src, "<json>", _json_problem(e))


def _json_problem(err: Exception) -> str:
    if isinstance(err, RecursionError):
        return "bad JSON: nested too deeply"
    return f"bad JSON: {err}"  # e.g. an integer with more digits than Python converts


def iter_records(path: str | Path) -> Iterator[tuple[Source, object | DataIssue]]:
    """Yield (source, record-or-issue) for a JSONL file (line numbers) or a JSON array file (record index).

    JSONL lines are split on b"\\n" only and decoded one by one: U+2028/U+2029/U+0085 inside strings are not
    line breaks (str.splitlines would split there), and one line in another encoding is reported by itself.
    A file that cannot be read at all raises DataError naming it.
    """
    path = Path(path)
    name = str(path)
    whole = Source(name, 0)
    if not path.exists():
        raise DataError([DataIssue(whole, "", "data file not found")])
    if path.is_dir():
        raise DataError([DataIssue(whole, "", "is a folder, not a data file")])
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError([DataIssue(whole, "", f"cannot read: {e.strerror or e}")]) from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if path.suffix == ".json" and data.lstrip().startswith(b"["):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            begin = data.rfind(b"\n", 0, e.start) + 1
            src = Source(name, data.count(b"\n", 0, e.start) + 1)
            yield src, DataIssue(src, "", _not_utf8(data[begin:].split(b"\n", 1)[0], e.start - begin))
            return
        try:
            arr = json.loads(text)
        except json.JSONDecodeError as e:
            yield Source(name, e.lineno), DataIssue(Source(name, e.lineno), "<json>", f"bad JSON: {e.msg}")
            return
        except (RecursionError, ValueError) as e:
            yield whole, DataIssue(whole, "<json>", _json_problem(e))
            return
        for i, rec in enumerate(arr, 1):
            yield Source(name, i), rec
        return
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        src = Source(name, lineno)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield src, DataIssue(src, "", _not_utf8(raw, e.start))
            continue
        yield src, _loads(line, src)


def read_file(path: str | Path, fmt: str = "auto", columns=None) -> tuple[list[Conversation], list[DataIssue]]:
    """Read every record; return good conversations and every issue (never raises on bad records).

    Raises DataError only when the file cannot be read at all (missing, a folder).
    """
    if columns is None:
        from glmtune.config.schema import ColumnMap

        columns = ColumnMap()
    convs, issues = [], []
    n_items = 0
    for src, rec in iter_records(path):
        n_items += 1
        if isinstance(rec, DataIssue):
            issues.append(rec)
            continue
        conv, errs = parse_record(rec, fmt, src, columns)
        issues += errs
        if conv is not None:
            convs.append(conv)
    if not n_items:
        issues.append(DataIssue(Source(str(path), 0), "", "no records (the file is empty or blank)"))
    return convs, issues
