"""Export and validation for Zhipu's (bigmodel.cn) fine-tuning upload: `{"messages": [...]}` per line.

Checks per sample (each problem names the line): the top level is exactly `{"messages": [...]}`
(extra keys such as our `id`/`rubric` are stripped on export); every message has exactly `role` and
`content`; roles are system/user/assistant; a system message may only come first; then user and
assistant alternate, starting with user and ending with assistant; contents are non-empty strings;
the sample fits the per-sample token limit (default 8192, the limit the upstream project hit, §9).
Without a tokenizer the length is estimated as CJK characters + other characters / 3 (a GLM-4
tokenizer puts about one CJK character and three to four ASCII characters in a token); pass
`count_tokens` for exact numbers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROLES = ("system", "user", "assistant")
DEFAULT_MAX_TOKENS = 8192
_CJK = re.compile(r"[\u3000-\u9fff\uff00-\uffef]")


def estimate_tokens(messages: list[dict]) -> int:
    text = "".join(str(m.get("content", "")) for m in messages)
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk + 2) // 3 + 4 * len(messages)


def validate_sample(obj, max_tokens: int = DEFAULT_MAX_TOKENS,
                    count_tokens: Callable[[list[dict]], int] | None = None, strict_keys: bool = True) -> list[str]:
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        return ['expected an object with a "messages" list']
    problems = []
    if strict_keys and set(obj) != {"messages"}:
        problems.append(f"extra top-level keys {sorted(set(obj) - {'messages'})}")
    msgs = obj["messages"]
    if not msgs:
        return problems + ["messages is empty"]
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append(f"messages[{i}] is not an object")
            continue
        if set(m) != {"role", "content"}:
            problems.append(f"messages[{i}] keys {sorted(m)}; expected exactly role and content")
        if m.get("role") not in ROLES:
            problems.append(f"messages[{i}].role {m.get('role')!r} not in {ROLES}")
        if not isinstance(m.get("content"), str) or not m.get("content", "").strip():
            problems.append(f"messages[{i}].content is empty or not a string")
    roles = [m.get("role") for m in msgs if isinstance(m, dict)]
    if "system" in roles[1:]:
        problems.append("a system message may only come first")
    turns = [r for r in roles if r != "system"]
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    if turns != expected[:len(turns)]:
        problems.append(f"roles must alternate user/assistant starting with user: {turns}")
    if not turns or turns[-1] != "assistant":
        problems.append("the last message must be the assistant's")
    n = (count_tokens or estimate_tokens)(msgs) if not problems else 0
    if n > max_tokens:
        problems.append(f"{n} tokens > per-sample limit {max_tokens}")
    return problems


@dataclass
class ZhipuReport:
    written: int = 0
    problems: list[str] = field(default_factory=list)  # "file:line: problem"

    @property
    def ok(self) -> bool:
        return not self.problems


def export(src: Path, dst: Path, max_tokens: int = DEFAULT_MAX_TOKENS,
           count_tokens: Callable[[list[dict]], int] | None = None) -> ZhipuReport:
    """Write only `messages` (role/content) of every valid sample of `src` to `dst`; report the rest."""
    report = ZhipuReport()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("w", encoding="utf-8") as out:
        for n, line in enumerate(Path(src).read_text("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                report.problems.append(f"{src}:{n}: invalid JSON ({err.msg})")
                continue
            if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                obj = {"messages": [{k: m.get(k) for k in ("role", "content")} if isinstance(m, dict) else m
                                    for m in obj["messages"]]}
            problems = validate_sample(obj, max_tokens, count_tokens)
            if problems:
                report.problems.extend(f"{src}:{n}: {p}" for p in problems)
                continue
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
            report.written += 1
    return report
