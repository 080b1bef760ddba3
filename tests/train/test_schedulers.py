"""Schedules, warm-up, clipping, weight decay, accumulation, NEFTune, eval every N steps and early
stopping, each through the real mapping `training_arguments` -> HF Trainer."""

import json
import typing

import pytest
import torch
from transformers import TrainerCallback

from glmtune.config import load_config
from glmtune.config.schema import TrainSection
from glmtune.train.callbacks import read_metrics
from glmtune.train.trainer import load_for_training, make_trainer_class, train, training_arguments

SCHEDULERS = typing.get_args(TrainSection.model_fields["scheduler"].annotation)
PEAK = 1e-3


@pytest.fixture(scope="module")
def tiny_model():
    return load_for_training(load_config(None, ["method.name=full"]))[1].model


def lrs_for(tiny_model, tmp_path, *overrides, steps=10, metric=None):
    cfg = load_config(None, [f"train.lr={PEAK}", "train.warmup_ratio=0", *overrides])
    args = training_arguments(cfg, tmp_path, n_train=40)
    trainer = make_trainer_class()(model=tiny_model, args=args, eval_dataset=[0] if args.eval_steps else None)
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    out = []
    for _ in range(steps):
        out.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        if metric is None:
            trainer.lr_scheduler.step()
        else:
            trainer.lr_scheduler.step(metric)
    return out


def test_every_scheduler_is_covered():
    assert len(SCHEDULERS) == 8 and "reduce_lr_on_plateau" in SCHEDULERS


@pytest.mark.parametrize("name", [s for s in SCHEDULERS if s != "reduce_lr_on_plateau"])
def test_scheduler_builds_warms_up_and_steps(tiny_model, tmp_path, name):
    lrs = lrs_for(tiny_model, tmp_path, f"train.scheduler={name}", "train.warmup_steps=3")
    if name == "constant":  # no warm-up by definition
        assert lrs == [PEAK] * 10
        return
    assert lrs[0] < lrs[1] < lrs[2] < PEAK and lrs[3] == pytest.approx(PEAK), lrs
    tail = lrs[3:]
    if name == "constant_with_warmup":
        assert tail == [pytest.approx(PEAK)] * len(tail)
    else:
        assert all(a >= b for a, b in zip(tail, tail[1:])) and tail[-1] < 0.8 * PEAK, lrs


def test_warmup_ratio_when_no_warmup_steps(tiny_model, tmp_path):
    lrs = lrs_for(tiny_model, tmp_path, "train.scheduler=linear", "train.warmup_ratio=0.3")
    assert lrs[2] < PEAK and lrs[3] == pytest.approx(PEAK)  # 30% of 10 steps


def test_reduce_lr_on_plateau_cuts_lr_when_eval_loss_stalls(tiny_model, tmp_path):
    lrs = lrs_for(tiny_model, tmp_path, "train.scheduler=reduce_lr_on_plateau", "train.eval_steps=1",
                  "train.hf_extra={lr_scheduler_kwargs: {patience: 1, factor: 0.5}}", metric=1.0)
    assert lrs[0] == PEAK and lrs[-1] < PEAK / 2


def test_clipping_decay_accumulation_map_to_hf(tmp_path):
    cfg = load_config(None, ["train.max_grad_norm=0.5", "train.weight_decay=0.1", "train.grad_accum=4",
                             "train.neftune_alpha=5"])
    a = training_arguments(cfg, tmp_path, n_train=8)
    assert (a.max_grad_norm, a.weight_decay, a.gradient_accumulation_steps, a.neftune_noise_alpha) == (0.5, 0.1, 4, 5)
    assert training_arguments(load_config(None, ["train.max_grad_norm=0"]), tmp_path, 8).max_grad_norm == 0


def _rows(n, answer):
    return [{"messages": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": answer(i)}]}
            for i in range(n)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_early_stopping_when_eval_loss_rises(tmp_path):
    """Train on answer A, validate on a contradicting answer B for the same prompts: as the model memorises A,
    eval loss rises, and patience 2 stops the run long before max_steps."""
    train_f = _write(tmp_path / "t.jsonl", _rows(4, lambda i: f"甲{i}甲甲"))
    val_f = _write(tmp_path / "v.jsonl", _rows(4, lambda i: f"乙{i}乙乙"))
    cfg = load_config(None, [f"data.train={train_f}", f"data.validation={val_f}", "train.max_steps=40",
                             "train.eval_steps=1", "train.early_stopping_patience=2", "train.lr=2e-2",
                             "train.scheduler=constant", "train.warmup_ratio=0", "method.dropout=0",
                             f"train.output_dir={tmp_path / 'run'}", "train.resume=never", "plan.strict=false"])
    res = train(cfg, quiet=True)
    evals = [r["eval_loss"] for r in read_metrics(res.run_dir / "metrics.jsonl") if "eval_loss" in r]
    during, final = evals[:-1], evals[-1]
    assert res.summary["steps"] < 40
    assert all(e > min(during) for e in during[-2:]), during  # two evals without improvement stopped it
    assert final == pytest.approx(min(during))  # and the best checkpoint was restored


class NeftuneProbe(TrainerCallback):
    """During training the input embeddings must carry NEFTune's noise hook (Jain et al. 2023)."""

    def on_step_end(self, args, state, control, model=None, **kw):
        emb = model.get_input_embeddings() if not hasattr(model, "get_base_model") else \
            model.get_base_model().get_input_embeddings()
        ids = torch.tensor([[5, 6, 7, 8]])
        emb.train()
        self.noisy = not torch.equal(emb(ids), emb(ids))


def test_neftune_noise_is_on_during_training_and_eval_every_n_steps(tmp_path):
    train_f = _write(tmp_path / "t.jsonl", _rows(8, lambda i: f"答案{i}"))
    probe = NeftuneProbe()
    cfg = load_config(None, [f"data.train={train_f}", "data.val_size=2", "train.max_steps=4", "train.eval_steps=2",
                             "train.neftune_alpha=5", f"train.output_dir={tmp_path / 'run'}", "train.resume=never",
                             "train.save_steps=1000", "plan.strict=false"])
    res = train(cfg, callbacks=[probe], quiet=True)
    assert probe.noisy
    assert [r["step"] for r in read_metrics(res.run_dir / "metrics.jsonl") if "eval_loss" in r][:2] == [2, 4]


def test_eval_steps_without_a_validation_split(tmp_path, capsys):
    """A config with eval_steps (every shipped one) on data without a validation split trains and says that
    no evaluation runs; a setting that needs eval loss stops with what to set instead of HF's error."""
    train_f = _write(tmp_path / "t.jsonl", _rows(8, lambda i: f"答案{i}"))
    common = [f"data.train={train_f}", "data.val_size=0", "train.max_steps=2", "train.eval_steps=1",
              "train.resume=never", "train.save_steps=1000", "plan.strict=false"]
    res = train(load_config(None, [*common, f"train.output_dir={tmp_path / 'a'}"]))
    assert res.summary["steps"] == 2 and res.summary["eval_loss"] is None
    assert "no evaluation will run" in capsys.readouterr().out
    assert not [r for r in read_metrics(res.run_dir / "metrics.jsonl") if "eval_loss" in r]
    with pytest.raises(ValueError, match="data.val_size"):
        train(load_config(None, [*common, "train.early_stopping_patience=2", f"train.output_dir={tmp_path / 'b'}"]),
              quiet=True)
