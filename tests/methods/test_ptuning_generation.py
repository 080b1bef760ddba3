"""P-Tuning generates with its prefix on every path (issue: transformers 5.24's generate() drops PEFT's prefix,
so a P-Tuning run silently answered as its base model).

Ground truth is a cache-free greedy decode of the PEFT model (each step re-runs the whole sequence through
`PeftModel.forward`, which always prepends the prefix), not anything built on `generate()`. Every glmtune path
(HFEngine.generate, HFEngine.stream, the training-time generation eval, the forgetting check's engine) must give
exactly those tokens, and they must differ from the base model's, or the test could not fail.
"""

import pytest
import torch

PROMPTS = [[{"role": "system", "content": "你是朗读老师,请按格式打分。"}, {"role": "user", "content": "语速3停顿2 很好"}],
           [{"role": "user", "content": "你好"}],
           [{"role": "user", "content": "第三题读得怎么样?" * 3}]]
N_NEW = 8


@pytest.fixture(scope="module", params=["glm4", "glm"])
def prefix_model(request):
    from peft import PrefixTuningConfig, get_peft_model

    from glmtune.config.schema import ModelSection
    from glmtune.models.load import load
    from glmtune.models.tiny import ensure_tiny

    loaded = load(ModelSection(path=str(ensure_tiny(request.param))))
    torch.manual_seed(0)  # a random N(0, 1) prefix moves the answers clearly
    model = get_peft_model(loaded.model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6)).eval()
    return model, loaded


def expected(model, loaded, engine, greedy):
    def text(net, p):  # engines drop a trailing incomplete UTF-8 character rather than answer U+FFFD
        ids = greedy(net, engine.prompt_ids(p), engine.stop_ids, N_NEW)
        return loaded.tokenizer.decode(ids, skip_special_tokens=True).strip().rstrip("\ufffd")

    tuned = [text(model, p) for p in PROMPTS]
    base = [text(model.get_base_model(), p) for p in PROMPTS]
    assert tuned != base, "the prefix changed no greedy answer: the test could not fail"
    return tuned, base


def test_engine_generate_and_stream_keep_the_prefix(prefix_model, cache_free_greedy):
    from glmtune.inference.engine import HFEngine

    model, loaded = prefix_model
    engine = HFEngine(model, loaded.tokenizer, loaded.family, "pt")
    try:
        tuned, _ = expected(model, loaded, engine, cache_free_greedy)
        assert [c.text for c in engine.generate(PROMPTS, max_new_tokens=N_NEW)] == tuned
        assert ["".join(engine.stream(p, max_new_tokens=N_NEW)).strip() for p in PROMPTS] == tuned
    finally:
        engine.close()


def test_engine_on_the_base_under_the_prefix_answers_as_the_base(prefix_model, cache_free_greedy):
    """The forgetting check scores the base through the same engine (trainer.forgetting_check)."""
    from glmtune.inference.engine import HFEngine

    model, loaded = prefix_model
    engine = HFEngine(model.get_base_model(), loaded.tokenizer, loaded.family, "base")
    _, base = expected(model, loaded, engine, cache_free_greedy)
    assert [c.text for c in engine.generate(PROMPTS, max_new_tokens=N_NEW)] == base


def test_generation_eval_during_training_keeps_the_prefix(prefix_model, cache_free_greedy):
    from glmtune.evaluate.callback import GenerationEvalCallback
    from glmtune.inference.engine import HFEngine

    model, loaded = prefix_model
    engine = HFEngine(model, loaded.tokenizer, loaded.family, "pt")
    tuned, _ = expected(model, loaded, engine, cache_free_greedy)
    cb = GenerationEvalCallback(loaded.tokenizer, [p + [{"role": "assistant", "content": "x"}] for p in PROMPTS],
                                every_n_steps=1, max_new_tokens=N_NEW)
    model.train()
    assert cb.generate(model) == tuned
    assert model.training, "the callback must give the model back in training mode"
