"""The README's main job on the embedded default: the tuned tiny model learns the answer format, the base does not."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, "-m", "glmtune", "demo", f"train.output_dir={out}"], capture_output=True,
                       text=True, env=env, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rep = json.loads((out / "demo" / "demo_report.json").read_text())
    assert rep["format_valid"]["tuned"] >= 0.9
    assert rep["format_valid"]["base"] < rep["format_valid"]["tuned"]
    assert rep["train"]["loss_last"] < rep["train"]["loss_first"]
    assert rep["train"]["data"]["samples_used"] == 209 and rep["held_out"] == 31
    assert (out / "plan" / "plan.json").exists() and (out / "plots" / "loss.png").exists()
    assert "per-dimension exact match" in p.stdout and "learner" in p.stdout
    assert "conclusion: the tuned model" in p.stdout and rep["conclusion"]
