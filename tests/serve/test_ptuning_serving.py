"""A P-Tuning v2 run through the batching engine: PeftModel.forward swaps in its own prefix cache, so the
engine must start each row from the learned prefix itself and call the base model. Concurrent greedy answers
(with and without the prompt-prefix cache) equal a cache-free greedy decode of the PEFT model (not PEFT's own
generate(), which transformers 5.24 made drop the prefix), and differ from the base model's."""

import threading

import pytest


@pytest.fixture(scope="module")
def ptuning_engine(tiny_glm4):
    import torch
    from peft import PrefixTuningConfig, get_peft_model

    from glmtune.config.schema import ModelSection
    from glmtune.models.load import load
    from glmtune.inference.engine import HFEngine

    loaded = load(ModelSection(path=str(tiny_glm4)))
    torch.manual_seed(0)  # a random prefix (N(0, 1) embeddings) moves the answers clearly
    model = get_peft_model(loaded.model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6))
    return HFEngine(model, loaded.tokenizer, loaded.family, "pt")


PROMPTS = [[{"role": "system", "content": "你是朗读老师,请按格式打分。" * 3},
            {"role": "user", "content": f"第{i}题" + "读得怎么样" * i}] for i in range(6)]


def concurrent(engine, be, **kw):
    out = [None] * len(PROMPTS)

    def go(i):
        ids = engine.prompt_ids(PROMPTS[i])
        out[i] = be.generate(ids, max_new_tokens=10, prefix_len=engine.prefix_boundary(PROMPTS[i], ids), **kw).text

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


@pytest.mark.parametrize("prefix_cache_tokens", [0, 4096])
def test_batched_ptuning_equals_cache_free_greedy(ptuning_engine, prefix_cache_tokens, cache_free_greedy):
    from glmtune.inference.batching import BASE, BatchingEngine

    def reference(net):
        return [ptuning_engine.tokenizer.decode(
            cache_free_greedy(net, ptuning_engine.prompt_ids(p), ptuning_engine.stop_ids, 10),
            skip_special_tokens=True).lstrip("\n").rstrip("\ufffd") for p in PROMPTS]

    be = BatchingEngine(ptuning_engine, max_batch_size=4, prefix_cache_tokens=prefix_cache_tokens)
    try:
        batched = concurrent(ptuning_engine, be)
        base = concurrent(ptuning_engine, be, adapter=BASE)
        if prefix_cache_tokens:
            assert be.prefix_cache.hits >= len(PROMPTS) - 2  # the shared system prompt was reused
    finally:
        be.close()
    assert batched == reference(ptuning_engine.model)
    assert base != batched, "the prefix changed nothing: the test could not fail"
    assert base == reference(ptuning_engine.model.get_base_model())


@pytest.mark.timeout(60)  # the bug was a hang
def test_failed_prefill_answers_with_an_error_and_the_engine_goes_on(served, monkeypatch):
    """A request whose prefill raises gets an error (it used to wait forever); the next one is served."""
    from glmtune.inference.batching import BatchingEngine

    engine = served.engine
    be = BatchingEngine(engine, max_batch_size=4)
    ids = engine.prompt_ids([{"role": "user", "content": "你好"}])
    try:
        original = be._prefill_one
        monkeypatch.setattr(be, "_prefill_one", lambda req: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            be.generate(ids, max_new_tokens=4)
        monkeypatch.setattr(be, "_prefill_one", original)
        assert be.generate(ids, max_new_tokens=4).finish_reason in ("stop", "length")
        assert be.errors == 1
    finally:
        be.close()
