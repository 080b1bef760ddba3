"""Real weights learn and forget: LoRA on SmolLM2-135M-Instruct (GGUF base) through the real CLI.

Two runs on a made-up format ("Record: name Normudak, code 1791" -> "1791@Normudak", random names/codes):
- gentle: lr 1e-3, 2 epochs;
- aggressive: lr 3e-3, 4 epochs over half the data (the same 16 steps, 3x the rate, each sample seen twice as often).
Each is evaluated by `glmtune eval --base-too --forgetting` on held-out items and on English general prompts
the base answers. The gentle run must learn what the base cannot do while keeping its general answers; the
aggressive run must show the larger drop, and `glmtune eval compare` must say so.
"""

import json
import subprocess
import sys

import pytest

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


def test_gguf_run_exports_and_the_export_serves_the_same_answers(runs, tmp_path):
    """The GGUF-based run merges into a plain checkpoint like any other; the merged folder answers as the run."""
    run = runs["gentle"]["run"]
    meta = json.loads((run / "method.json").read_text())
    assert "/gguf/" in meta["base"]  # the dequantized cache folder, not the .gguf file
    glmtune("export", "--run", run, "--out", tmp_path / "export")  # verified against the adapter by default
    assert (tmp_path / "export" / "config.json").exists()
    glmtune("eval", "--model-dir", tmp_path / "export", "--test", runs["files"]["test"], "--out", tmp_path / "ev",
            "eval.max_new_tokens=16", "eval.batch_size=8", "eval.metrics=[text]")
    test_rows = [json.loads(x) for x in runs["files"]["test"].read_text().splitlines()]
    merged, merged_rows, _ = exact(tmp_path / "ev" / "predictions.jsonl", test_rows)
    tuned, tuned_rows, _ = exact(run / "eval" / "predictions.jsonl", test_rows)
    same = sum(m["prediction"] == t["prediction"] for m, t in zip(merged_rows, tuned_rows))
    assert same >= len(test_rows) - 1 and abs(merged - tuned) <= 1 / len(test_rows)
