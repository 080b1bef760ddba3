"""Generate answers for a test split, written incrementally to `predictions.jsonl` and resumable.

Why incremental: LLaMA-Factory writes `generated_predictions.jsonl` only after the whole predict loop
(LF#5265), so an interrupted 2-hour eval is lost. Here each batch is appended and fsync-ed as soon as
it is generated; a rerun with the same `--out` reads what is there (a half-written last line from a
kill is dropped), skips those ids and generates only the rest.

A `predictions.meta.json` beside the file records what produced it (model, decoding settings, test
file). Resuming with different settings would mix two models' answers in one report, so it is refused
with a message saying how to start fresh.

Engines: anything with `generate(batch, max_new_tokens, temperature, top_p) -> list[Completion]`:
`glmtune.inference.engine.HFEngine` (local run folder / exported model) or `OpenAIEngine` below (any
OpenAI-compatible endpoint: glmtune serve, vLLM, SGLang, a hosted API).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from glmtune.errors import InputError
from glmtune.utils.io import atomic_write_json, write_jsonl

__all__ = ["Completion", "Engine", "EvalItem", "OpenAIEngine", "PredictionsMismatch", "generate_predictions",
           "items_from_conversations", "read_predictions"]


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = None  # set when the endpoint rejected this one request (e.g. prompt too long)


class Engine(Protocol):
    def generate(self, batch: list[list[dict]], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0) -> list: ...


@dataclass(frozen=True)
class EvalItem:
    id: str
    source: str
    prompt: list[dict]  # messages up to (not including) the reference answer
    reference: str


def items_from_conversations(conversations: Sequence) -> tuple[list[EvalItem], list[str]]:
    """One item per conversation: its last assistant turn is the reference, everything before is the prompt.

    Ids are the record's own `id` when every record has a distinct one, else `file:line`, so resume
    keys are stable across reruns. Conversations not ending in an assistant turn are reported, not used.
    """
    ids = [c.meta.get("id") for c in conversations]
    use_meta = all(i is not None for i in ids) and len({str(i) for i in ids}) == len(ids)
    items, problems = [], []
    for conv, meta_id in zip(conversations, ids):
        src = f"{conv.source.file}:{conv.source.line}"
        msgs = conv.messages
        if not msgs or msgs[-1].get("role") != "assistant":
            problems.append(f"{src}: no assistant answer at the end to compare with; skipped")
            continue
        items.append(EvalItem(str(meta_id) if use_meta else src, src, [dict(m) for m in msgs[:-1]], msgs[-1]["content"]))
    return items, problems


class PredictionsMismatch(InputError):
    """The predictions file in --out was produced with other settings."""


def read_predictions(path: str | Path) -> tuple[list[dict], int]:
    """Rows of a predictions JSONL and the number of unreadable lines (e.g. one cut by a kill)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    rows, bad = [], 0
    for line in path.read_text("utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and "id" in row:
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def _check_meta(meta_path: Path, meta: dict, have_rows: bool) -> None:
    if meta_path.exists() and have_rows:
        old = json.loads(meta_path.read_text("utf-8"))
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if diff:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise PredictionsMismatch(
                f"{meta_path.parent}/predictions.jsonl was generated with other settings ({shown}). "
                f"Use a new --out folder, or --restart to discard the old predictions."
            )
    atomic_write_json(meta_path, meta)


def generate_predictions(engine: Engine, items: Sequence[EvalItem], path: str | Path, *, batch_size: int = 8,
                         max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                         meta: dict | None = None, restart: bool = False,
                         on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Generate what is missing from `path`, append it batch by batch, return all rows in item order.

    Returns {"rows": [...], "resumed": n already there, "generated": n new, "dropped_lines": n,
    "seconds": generation wall time, "predictions_per_s": for the new ones}.
    Prompts are sorted longest first: batches hold similar lengths (less padding), and an out-of-memory
    batch shows up in the first seconds instead of at the end.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if restart:
        path.unlink(missing_ok=True)
    rows, bad = read_predictions(path)
    wanted = {it.id for it in items}
    done = {r["id"]: r for r in rows if r["id"] in wanted}
    meta = {**(meta or {}), "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    _check_meta(path.with_name("predictions.meta.json"), meta, bool(done))
    if bad or len(done) != len(rows):
        write_jsonl(path, list(done.values()))  # drop a cut last line / stale ids before appending
    todo = sorted((it for it in items if it.id not in done), key=lambda it: -sum(len(m["content"]) for m in it.prompt))
    t0 = time.perf_counter()
    with path.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            tb = time.perf_counter()
            outs = engine.generate([it.prompt for it in batch], max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p)
            if len(outs) != len(batch):
                raise RuntimeError(f"engine returned {len(outs)} completions for {len(batch)} prompts")
            per = (time.perf_counter() - tb) / len(batch)
            for it, c in zip(batch, outs):
                row = {"id": it.id, "source": it.source, "prompt": it.prompt, "reference": it.reference,
                       "prediction": c.text, "prompt_tokens": c.prompt_tokens,
                       "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
                       "seconds": round(per, 4)}
                if getattr(c, "error", None):
                    row["error"] = c.error
                done[it.id] = row
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            if on_batch:
                on_batch(len(done), len(items))
    seconds = time.perf_counter() - t0
    return {
        "rows": [done[it.id] for it in items],
        "resumed": len(items) - len(todo),
        "generated": len(todo),
        "dropped_lines": bad,
        "seconds": seconds,
        "predictions_per_s": len(todo) / seconds if todo and seconds > 0 else None,
    }


class OpenAIEngine:
    """Any OpenAI-compatible chat endpoint, with `concurrency` requests in flight.

    A batch is sent as concurrent requests: the server does the batching (vLLM continuous batching,
    glmtune serve's queue). A request the server rejects as invalid (4xx, e.g. prompt over the
    context length) becomes an empty answer carrying `error`, counted in the report; connection
    failures and 5xx after the client's retries stop the run (the file keeps what was done).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout: float = 600.0):
        from openai import OpenAI

        self.model = model
        self.concurrency = concurrency
        self.client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                             timeout=timeout, max_retries=3)

    def _one(self, messages: list[dict], max_new_tokens: int, temperature: float, top_p: float) -> Completion:
        import openai

        try:
            r = self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_new_tokens,
                                                    temperature=temperature, top_p=top_p)
        except openai.APIStatusError as err:
            if 400 <= err.status_code < 500 and err.status_code not in (401, 403, 404, 429):
                return Completion("", finish_reason="error", error=f"HTTP {err.status_code}: {err.message}")
            raise
        choice = r.choices[0]
        usage = r.usage
        return Completion(choice.message.content or "", usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, choice.finish_reason or "stop")

    def generate(self, batch: list[list[dict]], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0) -> list[Completion]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(batch)))) as pool:
            return list(pool.map(lambda m: self._one(m, max_new_tokens, temperature, top_p), batch))
