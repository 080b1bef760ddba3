"""The demo's oral-reading dataset: synthetic ISE results over the bundled passages, rubric labels.

`build_demo_dataset(out_dir, n, seed, mode, test_share)` writes `train.jsonl` and `test.jsonl`
(messages format, each record with an extra `id` and the engine's `rubric` bands). The test split is
held out BY PASSAGE TEXT: a passage's samples are all in train or all in test. Labels are the rubric
bands (§4), so a model can learn them exactly, or with `labels="teacher"` teacher-like noisy 1-5 labels
(`synth.teacher_like_labels`: what real teacher labels look like, for the `oral baseline` demo); `mode="evidence"` (default) uses the compact rubric
summary as system prompt and the computed metrics as user turn (see `prompts`), `mode="raw"` the
user's own long format. Deterministic in (n, seed, mode, test_share).

`token_budget(tokenizer, records_raw, records_evidence)` reports p50/p90/max chat-template token
lengths of both modes, e.g. for `glmtune data stats`.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path


def load_passages() -> list[str]:
    text = (resources.files("glmtune") / "assets" / "oral_passages.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def split_passages(passages: list[str], seed: int, test_share: float) -> tuple[list[str], list[str]]:
    order = sorted(passages)
    random.Random(f"passages:{seed}").shuffle(order)
    n_test = max(1, round(len(order) * test_share)) if test_share > 0 else 0
    return order[n_test:], order[:n_test]


def demo_items(n: int, seed: int, labels: str = "rubric") -> list:
    """n synthetic `build.Item`s (id, passage, record) drawn deterministically from `seed`; with
    `labels="teacher"` each also carries teacher-like noisy labels (deterministic too)."""
    from glmtune.tasks.oral_reading.build import Item
    from glmtune.tasks.oral_reading.rubric import compute_metrics
    from glmtune.tasks.oral_reading.synth import random_params, simulate, teacher_like_labels

    if labels not in ("rubric", "teacher"):
        raise ValueError(f"labels must be rubric or teacher, got {labels!r}")
    passages = load_passages()
    items = []
    for k in range(n):
        rng = random.Random(f"demo:{seed}:{k}")
        text = passages[rng.randrange(len(passages))]
        rec, _ = simulate(text, random_params(rng), rng.randrange(2**31))
        item = Item(f"oral-{seed}-{k:05d}", text, rec)
        if labels == "teacher":
            item.labels = teacher_like_labels(compute_metrics(rec, text), random.Random(f"teacher:{seed}:{k}"))
        items.append(item)
    return items


def build_demo_dataset(out_dir: Path, n: int = 240, seed: int = 0, mode: str = "evidence",
                       test_share: float = 0.15, labels: str = "rubric") -> dict[str, Path]:
    from glmtune.tasks.oral_reading.build import build_sample

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _, test_passages = split_passages(load_passages(), seed, test_share)
    held = set(test_passages)
    paths = {"train": out_dir / "train.jsonl", "test": out_dir / "test.jsonl"}
    with paths["train"].open("w", encoding="utf-8") as tr, paths["test"].open("w", encoding="utf-8") as te:
        for item in demo_items(n, seed, labels):
            sample = build_sample(item, mode, labels)
            (te if item.text in held else tr).write(json.dumps(sample, ensure_ascii=False) + "\n")
    return paths


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"n": 0, "p50": 0, "p90": 0, "max": 0}
    s = sorted(values)
    pick = (lambda q: s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))])
    return {"n": len(s), "p50": pick(0.5), "p90": pick(0.9), "max": s[-1]}


def record_tokens(tokenizer, record: dict) -> int:
    ids = tokenizer.apply_chat_template(record["messages"], tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    return len(ids)


def token_budget(tokenizer, records_raw: list[dict], records_evidence: list[dict]) -> dict:
    """{"raw": {n,p50,p90,max}, "evidence": {...}, "ratio_p50": raw/evidence} in chat-template tokens."""
    raw = _percentiles([record_tokens(tokenizer, r) for r in records_raw])
    ev = _percentiles([record_tokens(tokenizer, r) for r in records_evidence])
    return {"raw": raw, "evidence": ev, "ratio_p50": round(raw["p50"] / ev["p50"], 2) if ev["p50"] else None}
