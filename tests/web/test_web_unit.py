"""The web app's pieces without a browser: workspace confinement, bind safety, the train form -> config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glmtune.config.load import ConfigError
from glmtune.web import actions
from glmtune.web.app import check_bind
from glmtune.web.workspace import WebError, Workspace

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws")


def test_paths_cannot_escape_the_workspace(ws, tmp_path):
    outside = tmp_path / "secret.jsonl"
    outside.write_text("{}\n")
    for bad in ("../secret.jsonl", str(outside), "data/../../secret.jsonl", "/etc/passwd"):
        with pytest.raises(WebError, match="outside the workspace"):
            ws.resolve(bad)
    (ws.data_dir / "link.jsonl").symlink_to(outside)  # a symlink inside pointing out is outside too
    with pytest.raises(WebError, match="outside the workspace"):
        ws.resolve("data/link.jsonl")
    with pytest.raises(WebError, match="not found"):
        ws.resolve("data/missing.jsonl")
    (ws.data_dir / "ok.jsonl").write_text("{}\n")
    assert ws.resolve("data/ok.jsonl") == ws.data_dir / "ok.jsonl"
    assert ws.resolve(str(ws.data_dir / "ok.jsonl")) == ws.data_dir / "ok.jsonl"


def test_uploads_keep_only_a_clean_base_name(ws, tmp_path):
    src = tmp_path / "up.jsonl"
    src.write_text("{}\n")
    dest = ws.save_upload(src, "../../../etc/evil name.jsonl")
    assert dest == ws.data_dir / "evil_name.jsonl" and dest.read_text() == "{}\n"
    assert ws.data_files() == ["data/evil_name.jsonl"]
    with pytest.raises(WebError, match=".jsonl or .json"):
        ws.save_upload(src, "run.sh")


def test_data_check_lists_problems_with_file_and_line(ws):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (ws.data_dir / "d.jsonl").write_text(json.dumps(good) + "\n{oops\n")
    lines, summary = actions.check_data(ws, "data/d.jsonl")
    assert lines[0].startswith("data/d.jsonl:2: <json>: bad JSON")
    assert summary == "data/d.jsonl: 1 good record(s), 1 problem(s)"


def test_bind_elsewhere_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "s3cret")
    with pytest.raises(WebError, match="without an access token"):
        check_bind("0.0.0.0", None)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GLMTUNE_WEB_TOKEN", None)
    p = subprocess.run([sys.executable, "-m", "glmtune", "web", "--host", "0.0.0.0", "--workspace", "/nonexistent/x"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().startswith("error: refusing to listen on 0.0.0.0")
    assert "Traceback" not in p.stderr


def form(**kw):
    values, extra = actions.preset_form("tiny/lora.yaml")
    return {**values, "run_name": "r1", "extra": extra, **kw}


def test_preset_fills_the_form_and_its_other_settings(ws):
    values, extra = actions.preset_form("tiny/lora.yaml")
    assert values["method"] == "lora" and values["lr"] == 0.005 and values["cutoff_len"] == 576
    assert extra.splitlines() == ["train.eval_steps=50", "train.resume=never"]
    cfg, overrides, run_dir, yaml_text, line = actions.build_train(ws, form())
    # The form reproduces the preset exactly (except where the run goes).
    from glmtune.config.load import load_config

    preset = load_config(actions.CONFIGS_DIR / "tiny/lora.yaml", [f"train.output_dir={run_dir}"])
    assert cfg == preset
    assert line.startswith("glmtune train ") and f"train.output_dir={run_dir}" in line
    assert "lr: 0.005" in yaml_text and run_dir == ws.runs_dir / "r1"


def test_the_form_is_checked_by_the_configs_own_messages(ws):
    with pytest.raises(ConfigError, match="train.lr: Input should be greater than 0"):
        actions.build_train(ws, form(lr=-1))
    with pytest.raises(ConfigError, match="unknown key 'train.bogus'"):
        actions.build_train(ws, form(extra="train.bogus=1"))
    with pytest.raises(WebError, match="run name"):
        actions.build_train(ws, form(run_name="../escape"))
    with pytest.raises(WebError, match="outside the workspace"):
        actions.build_train(ws, form(extra="data.validation=/etc/passwd"))
    cfg = actions.build_train(ws, form(method="ptuning", pre_seq_len=16))[0]
    assert cfg.method.name == "ptuning" and cfg.method.pre_seq_len == 16  # LoRA fields are not carried over


def test_progress_reads_metrics_and_the_training_bar(ws, tmp_path):
    from glmtune.web.jobs import Job

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
                                       '{"step": 2, "eval_loss": 1.7}\n')
    log = tmp_path / "log.txt"
    log.write_text("Loading weights: 100%|###| 29/29 [00:00<00:00]\n"
                   "  0%|          | 0/6 [00:00<?, ?it/s]\r 33%|###       | 2/6 [00:04<00:08,  2.19s/it]\n"
                   "100%|##########| 2/2 [00:00<00:00]\n")  # an eval bar: not the training progress
    job = Job(1, "train", "r", [], str(run), str(log), "", None, None, "running", 0, None, None, False, None, None)
    prog = actions.job_progress(job)
    assert (prog["step"], prog["total"], prog["eta"]) == (2, 6, "00:08")
    assert [r["series"] for r in prog["rows"]] == ["train", "train", "eval"]


def test_plan_the_form_and_apply_a_recommendation(ws):
    text, png, advice, line = actions.plan_form(ws, form(), "RTX4090-24GB")
    assert "recommendations" in text and "RTX4090-24GB" in text and png.exists()
    assert png.parent == ws.root / "plans" / "r1" and not (ws.runs_dir / "r1").exists()
    assert line.startswith("glmtune plan ") and "--gpu RTX4090-24GB" in line
    lr = next(row for row in advice if row[0] == "train.lr")
    applied = actions.apply_advice(form(), f"train.lr={lr[2]}")
    assert applied["lr"] == float(lr[2])  # a form field: set in place
    applied = actions.apply_advice(applied, "train.warmup_steps=0")
    assert applied["extra"].splitlines()[-1] == "train.warmup_steps=0"
    applied = actions.apply_advice(applied, "train.eval_steps=12")  # replaces the preset's eval_steps line
    assert applied["extra"].splitlines().count("train.eval_steps=12") == 1
    assert "train.eval_steps=50" not in applied["extra"]
    assert actions.build_train(ws, dict(applied, run_name="r2"))[0].train.eval_steps == 12
