"""GenerationEvalCallback on the tiny GLM-4: measures only every N steps, restores train mode, and its
numbers land in the trainer's log history (through trainer.log when attached)."""

import pytest

ANSWER = "语速:3;停顿:3;评语:好"


@pytest.fixture(scope="module")
def tiny(tiny_glm4):
    from glmtune.config.schema import ModelSection
    from glmtune.models.load import load

    return load(ModelSection(path=str(tiny_glm4)))


def _convs(n=3):
    return [[{"role": "user", "content": f"朗读得分{i}"}, {"role": "assistant", "content": ANSWER}] for i in range(n)]


def _spec(tmp_path):
    p = tmp_path / "mini.yaml"
    p.write_text("name: mini\nfields:\n  - {name: 语速, type: int, allowed: [1,2,3,4,5]}\n"
                 "  - {name: 停顿, type: int, allowed: [1,2,3,4,5]}\n  - {name: 评语, type: str}\n", encoding="utf-8")
    return str(p)


def test_measures_every_n_steps_without_trainer(tiny, tmp_path):
    from transformers import TrainerControl, TrainerState

    from glmtune.evaluate.callback import GenerationEvalCallback

    cb = GenerationEvalCallback(tiny.tokenizer, _convs(), every_n_steps=2, max_new_tokens=6, field_spec=_spec(tmp_path))
    state, control = TrainerState(), TrainerControl()
    tiny.model.train()
    for step in range(1, 5):
        state.global_step = step
        cb.on_step_end(None, state, control, model=tiny.model)
    assert [h["step"] for h in cb.history] == [2, 4]
    assert tiny.model.training                                   # put back in train mode
    entry = state.log_history[-1]
    assert entry["step"] == 4 and entry["gen_samples"] == 3
    assert 0.0 <= entry["gen_format_validity"] <= 1.0 and "gen_exact_match/语速" in entry
    assert len(cb.last_predictions) == 3
    logs = {"loss": 1.0}
    cb.on_log(None, state, control, logs=logs)                   # pending numbers ride along the next log
    assert "gen_format_validity" in logs


def test_rejects_conversations_without_answer(tiny):
    from glmtune.evaluate.callback import GenerationEvalCallback

    with pytest.raises(ValueError, match="reference assistant answer"):
        GenerationEvalCallback(tiny.tokenizer, [[{"role": "user", "content": "q"}]], 1, 4, None)


@pytest.mark.slow
def test_logs_through_a_real_trainer(tiny_glm4, tmp_path):
    from transformers import Trainer, TrainingArguments

    from glmtune.config.schema import ModelSection
    from glmtune.data.collate import ExampleDataset, PadCollator
    from glmtune.data.formats import Source
    from glmtune.data.render import Example, Renderer
    from glmtune.evaluate.callback import GenerationEvalCallback
    from glmtune.models.load import load, stop_token_ids

    loaded = load(ModelSection(path=str(tiny_glm4)))
    tok = loaded.tokenizer
    r = Renderer(tok, stop_token_ids(tok, loaded.family))
    train = [Example(*r.render(c), Source("t", i)) for i, c in enumerate(_convs(16))]
    cb = GenerationEvalCallback(tok, _convs(2), every_n_steps=10, max_new_tokens=24, field_spec=_spec(tmp_path))
    args = TrainingArguments(output_dir=str(tmp_path / "o"), per_device_train_batch_size=4, max_steps=30, lr_scheduler_type="constant",
                             learning_rate=5e-3, logging_steps=10, report_to=[], use_cpu=True, save_strategy="no",
                             remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=loaded.model, args=args, train_dataset=ExampleDataset(train),
                      data_collator=PadCollator(tok.pad_token_id), callbacks=[cb])
    cb.attach(trainer)
    trainer.train()
    gen = [h for h in trainer.state.log_history if "gen_format_validity" in h]
    assert [h["step"] for h in gen] == [10, 20, 30]
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [10, 20, 30]   # loss logs kept
    # full fine-tuning on one fixed answer: the format is learnt between the first and the last measurement
    assert gen[0]["gen_format_validity"] < gen[-1]["gen_format_validity"] == 1.0
    assert gen[-1]["gen_exact_match/语速"] == 1.0
