"""`glmtune plan` end to end: tables, plan.json, lengths.png; built-in facts with estimated lengths;
cloud-only models; `--measure` running real steps of glmtune's training path on the tiny model."""

import json

from glmtune.cli import main


def test_plan_demo_on_tiny(tmp_path, tiny_glm4, capsys):
    rc = main(["plan", "model.path=tiny:glm4", "--gpu", "RTX4090-24GB", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert (tmp_path / "lengths.png").stat().st_size > 1000
    assert not plan["data"]["approximate"] and plan["data"]["samples"] == len(plan["lengths"])
    assert set(plan["memory"]) == {"full", "freeze", "lora", "qlora", "ptuning"}
    assert all(r["fits"] for r in plan["memory"].values())
    assert plan["time"]["seconds_per_epoch"] > 0
    assert "recommendations" in out and "data.cutoff_len" in out


def test_plan_builtin_9b_estimates_lengths(tmp_path, capsys):
    rc = main(["plan", "model.path=glm-4-9b-chat-hf", "train.precision=bf16", "data.cutoff_len=192",
               "--gpu", "RTX4090-24GB", "--out", str(tmp_path)])
    assert "estimate" in capsys.readouterr().out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["data"]["approximate"] and "estimates" in plan["data"]["note"]
    assert plan["model"]["params"] > 9.3e9 and plan["memory"]["full"]["fits"] is False
    assert plan["memory"]["full"]["fix"] is None or "qlora" in plan["memory"]["full"]["fix"]["change"]
    fatal = [f for f in plan["findings"] if f["level"] == "fatal"]
    assert rc == 1 and fatal and fatal[0]["code"] == "all_truncated"   # demo prompts are > 192 tokens
    assert "approximate_lengths" in {f["code"] for f in plan["findings"]}


def test_cloud_only_model_points_to_zhipu_export(capsys):
    assert main(["plan", "model.path=GLM-4-Flash"]) == 2
    err = capsys.readouterr().err
    assert "cannot be fine-tuned locally" in err and "glmtune oral build --zhipu" in err


def test_measure_runs_real_steps(tmp_path, tiny_glm4):
    from glmtune.config import load_config
    from glmtune.plan.measure import measure_training

    cfg = load_config(None, ["model.path=tiny:glm4", "train.batch_size=2", "data.max_samples=40",
                             f"train.output_dir={tmp_path}"])
    t = measure_training(cfg, steps=2, warmup=1)
    assert t.tokens_per_second > 0 and t.padded_tokens_per_second >= t.tokens_per_second and t.steps == 2
