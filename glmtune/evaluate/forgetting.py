"""Forgetting check: does the tuned model still answer simple general questions the base model answered?

Users hit catastrophic forgetting after P-Tuning / LoRA on a few hundred samples (ChatGLM-6B#804
"丧失了原有的基本对话能力", CG6#1419, LF#19) and no peer measures it before vs after by default.
The bundled set `glmtune/assets/forgetting_general.jsonl` has 30 short Chinese/English prompts with
checkable answers (arithmetic, capitals, simple facts, one-word translation). It is a smoke alarm,
not a benchmark: it tells "the model lost basic ability", not by how much on C-Eval.

Answer matching (spec `glmtune-forgetting-1`): an answer is correct when any `accept` entry matches:
`re:PATTERN` is a Python regex searched in the answer; a plain ASCII word/phrase matches
case-insensitively on word boundaries ("ice" does not match "price"); any other text is a substring.
The test suite checks no accept entry matches its own prompt, so an echoing model scores 0.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from glmtune.errors import InputError

__all__ = ["FORGETTING_SPEC", "answer_ok", "forgetting_delta", "load_items", "render_forgetting", "run_forgetting",
           "score_engine"]

FORGETTING_SPEC = "glmtune-forgetting-1"


def load_items(path: str | Path | None = None) -> list[dict]:
    """The bundled set, or a JSONL file of {"id", "prompt", "accept": [...]} (optional "system")."""
    text = (Path(path).read_text("utf-8") if path else
            (resources.files("glmtune") / "assets" / "forgetting_general.jsonl").read_text("utf-8"))
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path or 'forgetting_general.jsonl'}:{n}: not JSON ({err})") from None
        if not isinstance(item, dict) or not item.get("prompt") or not item.get("accept"):
            raise InputError(f"{path or 'forgetting_general.jsonl'}:{n}: needs 'prompt' and a non-empty 'accept' list")
        item.setdefault("id", f"line-{n}")
        items.append(item)
    return items


def answer_ok(answer: str, accept: list[str]) -> bool:
    """True when any accept entry matches (rules in the module docstring).

    >>> answer_ok("The answer is 42.", ["re:(?<!\\\\d)42(?!\\\\d)"]), answer_ok("price", ["ice"]), answer_ok("是北京。", ["北京"])
    (True, False, True)
    """
    answer = answer or ""
    for a in accept:
        if a.startswith("re:"):
            if re.search(a[3:], answer):
                return True
        elif a.isascii():
            if re.search(rf"(?i)(?<![A-Za-z0-9]){re.escape(a)}(?![A-Za-z0-9])", answer):
                return True
        elif a in answer:
            return True
    return False


def score_engine(engine, items: list[dict] | None = None, max_new_tokens: int = 64, batch_size: int = 8) -> dict:
    """Greedy answers of one engine on the set: {"accuracy", "correct", "n", "answers": {id: (text, ok)}}."""
    items = items if items is not None else load_items()
    answers: dict[str, tuple[str, bool]] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        prompts = [([{"role": "system", "content": it["system"]}] if it.get("system") else [])
                   + [{"role": "user", "content": it["prompt"]}] for it in chunk]
        outs = engine.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0)
        for it, c in zip(chunk, outs):
            answers[it["id"]] = (c.text, answer_ok(c.text, it["accept"]))
    correct = sum(ok for _, ok in answers.values())
    return {"accuracy": correct / len(items) if items else None, "correct": correct, "n": len(items), "answers": answers}


def forgetting_delta(base: dict, tuned: dict, items: list[dict] | None = None) -> dict:
    """Combine two `score_engine` results into the report: accuracies, delta, items lost and gained."""
    items = items if items is not None else load_items()
    rows, lost, gained = [], [], []
    for it in items:
        b_text, b_ok = base["answers"][it["id"]]
        t_text, t_ok = tuned["answers"][it["id"]]
        rows.append({"id": it["id"], "prompt": it["prompt"], "base": b_text, "base_ok": b_ok, "tuned": t_text, "tuned_ok": t_ok})
        if b_ok and not t_ok:
            lost.append(it["id"])
        elif t_ok and not b_ok:
            gained.append(it["id"])
    delta = (tuned["accuracy"] - base["accuracy"]) if items else None
    return {"spec": FORGETTING_SPEC, "n": len(items), "base_accuracy": base["accuracy"], "tuned_accuracy": tuned["accuracy"],
            "delta": delta, "lost": lost, "gained": gained, "items": rows}


def run_forgetting(base_engine, tuned_engine, items: list[dict] | None = None, max_new_tokens: int = 64,
                   batch_size: int = 8) -> dict:
    """Score both engines on the set and report the change. Training calls this at its end.

    Returns {"spec", "n", "base_accuracy", "tuned_accuracy", "delta", "lost": [ids the base got right and
    the tuned model got wrong], "gained": [...], "items": [per prompt answers and verdicts]}.
    To bound memory, callers holding one model at a time can use `score_engine` twice + `forgetting_delta`.
    """
    items = items if items is not None else load_items()
    base = score_engine(base_engine, items, max_new_tokens, batch_size)
    tuned = score_engine(tuned_engine, items, max_new_tokens, batch_size)
    return forgetting_delta(base, tuned, items)


def render_forgetting(result: dict, console=None) -> str:
    """One red (worse), green (better) or yellow (unchanged) line via rich; returns the plain text."""
    from rich.console import Console

    console = console or Console(stderr=True)
    b, t, d = result["base_accuracy"], result["tuned_accuracy"], result["delta"]
    text = (f"forgetting check: general accuracy {b:.0%} (base) -> {t:.0%} (tuned), {d * 100:+.1f} points"
            f"; lost {len(result['lost'])}, gained {len(result['gained'])} of {result['n']}")
    style = "bold red" if d < 0 else "bold green" if d > 0 else "yellow"
    console.print(text, style=style, markup=False, highlight=False)
    if result["lost"]:
        console.print("  lost: " + ", ".join(result["lost"][:10]), style="red", markup=False, highlight=False)
    return text
