"""Faults during training (issue 19 rows 8, 11, 12): a diverged run saves nothing as success, a kill during
checkpoint rotation never leaves no complete checkpoint, and a resumed run's metrics and throughput are right."""

import json

import pytest
import torch
from transformers import TrainerCallback

import glmtune.train.trainer as trainer_mod
from glmtune.config import load_config
from glmtune.train.callbacks import COMPLETE, complete_checkpoints, read_metrics
from glmtune.train.trainer import DivergedError, train


def cfg_for(data, out, tiny, *more):
    return load_config(None, [f"data.train={data}", f"train.output_dir={out}", f"model.path={tiny}",
                              "data.val_size=0", "train.max_steps=8", "train.save_steps=4", "train.batch_size=4",
                              "train.lr=5e-3", "train.warmup_steps=2", "plan.strict=false", *more])


class Poison(TrainerCallback):
    """Writes a NaN into the first trainable weight at the end of `step` (what an overflow does)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == self.step:
            p = next(p for p in model.parameters() if p.requires_grad)
            with torch.no_grad():
                p.view(-1)[0] = float("nan")


class CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def nothing_saved_as_success(run):
    assert not (run / "adapter").exists() and not (run / "summary.json").exists()


def test_non_finite_loss_stops_training_naming_the_step(tmp_path, grading_file, tiny_glm4):
    run = tmp_path / "r"
    with pytest.raises(DivergedError, match=r"training diverged at step 3: the loss is nan \(not finite\)"):
        train(cfg_for(grading_file, run, tiny_glm4, "train.save_steps=50"), callbacks=[Poison(2)], quiet=True)
    nothing_saved_as_success(run)
    assert complete_checkpoints(run / "checkpoints") == []


@pytest.mark.parametrize("more, saved", [
    (["train.max_steps=2"], "as a checkpoint"),  # the end of training saves a checkpoint first
    (["train.max_steps=4", "train.save_steps=2"], "as a checkpoint"),
    (["train.max_steps=2", "train.hf_extra={save_strategy: 'no'}"], "in .*adapter"),
])
def test_non_finite_weight_is_never_saved(tmp_path, grading_file, tiny_glm4, more, saved):
    run = tmp_path / "r"
    with pytest.raises(DivergedError, match=rf"training diverged by step 2: trainable weight\(s\) \S+lora_\S+ hold "
                                            rf"inf/nan; nothing was saved {saved}"):
        train(cfg_for(grading_file, run, tiny_glm4, *more), callbacks=[Poison(2)], quiet=True)
    nothing_saved_as_success(run)
    assert not (run / "checkpoints" / "checkpoint-2").exists()


def test_kill_before_the_new_checkpoint_is_complete_keeps_the_last_complete_one(tmp_path, grading_file, tiny_glm4,
                                                                              monkeypatch):
    run = tmp_path / "r"
    cfg = cfg_for(grading_file, run, tiny_glm4, "train.save_total_limit=1", "train.save_steps=2",
                  "train.max_steps=4")
    real = trainer_mod.atomic_write_text

    def killed_before_marking_4(path, text):
        if path.name == COMPLETE and path.parent.name == "checkpoint-4":
            raise KeyboardInterrupt  # kill -9 after checkpoint-4's files, before its completion marker
        return real(path, text)

    monkeypatch.setattr(trainer_mod, "atomic_write_text", killed_before_marking_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["checkpoint-2"]

    monkeypatch.setattr(trainer_mod, "atomic_write_text", real)
    res = train(cfg, quiet=True)
    assert res.summary["resumed_from"].endswith("checkpoint-2") and res.summary["steps"] == 4
    # the limit still holds once the new checkpoint is complete
    assert [p.name for p in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-4"]
    assert (run / "checkpoints" / "checkpoint-4" / COMPLETE).exists()


def test_rotation_keeps_the_checkpoint_just_written_even_below_an_older_branch(tmp_path, grading_file, tiny_glm4):
    run = tmp_path / "r"
    train(cfg_for(grading_file, run, tiny_glm4, "train.max_steps=4", "train.save_steps=2", "train.save_total_limit=null"),
          quiet=True)
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]
    # resume the older checkpoint on purpose; the run ends at step 3, below the other branch's checkpoint-4
    res = train(cfg_for(grading_file, run, tiny_glm4, "train.max_steps=3", "train.save_steps=2",
                        "train.save_total_limit=1", f"train.resume={run / 'checkpoints' / 'checkpoint-2'}"), quiet=True)
    assert res.summary["steps"] == 3
    assert [p.name for p in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]
    assert complete_checkpoints(run / "checkpoints") == [run / "checkpoints" / "checkpoint-3"]


def test_resume_that_finds_no_complete_checkpoint_says_so(tmp_path, grading_file, tiny_glm4, capsys):
    run = tmp_path / "r"
    half = run / "checkpoints" / "checkpoint-4"
    half.mkdir(parents=True)
    (half / "optimizer.pt").write_bytes(b"cut short")
    res = train(cfg_for(grading_file, run, tiny_glm4, "train.max_steps=2"), quiet=True)
    out = capsys.readouterr().out
    assert f"train.resume=auto: no complete checkpoint in {run / 'checkpoints'} (1 folder(s) without the " \
           f"{COMPLETE} marker: saves cut short); starting from step 0" in out
    assert res.summary["resumed_from"] is None and res.summary["steps"] == 2


def test_resumed_run_replaces_replayed_metrics_rows_and_counts_its_own_throughput(tmp_path, grading_file,
                                                                                   tiny_glm4):
    run = tmp_path / "r"
    cfg = cfg_for(grading_file, run, tiny_glm4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[CrashAt(6)], quiet=True)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4, 5]
    before = json.loads((run / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())

    res = train(cfg, quiet=True)
    s = res.summary
    assert s["resumed_from"].endswith("checkpoint-4")
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert s["steps_this_run"] == 4
    assert s["tokens_this_run"] == s["tokens_seen"] - before["num_input_tokens_seen"] > 0
    assert s["tokens_per_s"] == pytest.approx(s["tokens_this_run"] / s["wall_s"], rel=0.02)


def test_fresh_run_in_a_used_folder_starts_a_new_metrics_file(tmp_path, grading_file, tiny_glm4):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n{"step": 7, "loss": 98.0}\n{"step": 8, "lo',
                                       encoding="utf-8")
    train(cfg_for(grading_file, run, tiny_glm4, "train.max_steps=2", "train.resume=never"), quiet=True)
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] < 90 for r in rows)
