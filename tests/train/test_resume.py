"""A crash mid-training loses at most the steps since the last complete checkpoint, and resuming from it
gives the same adapter as an uninterrupted run."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from glmtune.config import load_config
from glmtune.train.callbacks import complete_checkpoints
from glmtune.train.trainer import train


class CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run


def cfg_for(data, out, tiny):
    return load_config(None, [f"data.train={data}", f"train.output_dir={out}", f"model.path={tiny}",
                              "data.val_size=0", "train.max_steps=8", "train.save_steps=4", "train.batch_size=4",
                              "train.lr=5e-3", "train.warmup_steps=2", "plan.strict=false"])


def adapter(run):
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_resume_after_interrupt_matches_uninterrupted(tmp_path, grading_file, tiny_glm4):
    ref = train(cfg_for(grading_file, tmp_path / "ref", tiny_glm4), quiet=True)
    run = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(grading_file, run, tiny_glm4), callbacks=[CrashAt(6)], quiet=True)
    assert not (run / "adapter").exists() and not (run / "summary.json").exists()
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["checkpoint-4"]
    # A checkpoint whose save was cut short (no completion marker) must be ignored.
    half = run / "checkpoints" / "checkpoint-6"
    shutil.copytree(run / "checkpoints" / "checkpoint-4", half)
    (half / "GLMTUNE_COMPLETE").unlink()
    (half / "optimizer.pt").write_bytes(b"truncated")

    resumed = train(cfg_for(grading_file, run, tiny_glm4), quiet=True)
    assert resumed.summary["resumed_from"].endswith("checkpoint-4")
    assert resumed.summary["steps"] == 8
    a, b = adapter(ref.run_dir), adapter(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    # the adapter really trained (not equal to LoRA's zero-initialised B)
    assert any(v.abs().sum() > 0 for k, v in b.items() if "lora_B" in k)


@pytest.mark.slow
def test_run_folder_contract(tmp_path, grading_file, tiny_glm4):
    res = train(cfg_for(grading_file, tmp_path / "r", tiny_glm4), quiet=True)
    r = res.run_dir
    for name in ("config.yaml", "method.json", "summary.json", "data_report.json", "skips.jsonl", "metrics.jsonl",
                 "tokenizer/tokenizer_config.json", "adapter/adapter_config.json", "plots/loss.png"):
        assert (r / name).exists(), name
    assert list((r / "tb").rglob("events.out.tfevents.*")), "TensorBoard events"
    meta = json.loads((r / "method.json").read_text())
    assert meta["method"] == "lora" and meta["artifact"] == "adapter" and meta["family"] == "glm4"
    rows = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in rows if "loss" in x]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert res.summary["loss_last"] < res.summary["loss_first"]
    assert not list(r.glob(".*.partial")) and not list(r.rglob("*.tmp"))


@pytest.mark.slow
def test_generation_eval_and_forgetting_hooks(tmp_path, grading_file, tiny_glm4):
    cfg = load_config(None, [f"data.train={grading_file}", f"train.output_dir={tmp_path / 'g'}", f"model.path={tiny_glm4}",
                             "data.val_size=4", "train.max_steps=4", "train.batch_size=4", "train.lr=5e-3",
                             "eval.during_training_every=2", "eval.during_training_samples=2", "eval.max_new_tokens=8",
                             "eval.field_spec=null", "eval.forgetting=true", "eval.forgetting_max_new_tokens=4",
                             "plan.strict=false"])
    res = train(cfg, quiet=True)
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    gen_steps = [r["step"] for r in rows if "gen_samples" in r]
    assert gen_steps == [2, 4]
    f = json.loads((res.run_dir / "forgetting.json").read_text())
    assert f["n"] == 30 and 0 <= f["base_accuracy"] <= 1 and res.summary["forgetting"]["delta"] == f["delta"]
