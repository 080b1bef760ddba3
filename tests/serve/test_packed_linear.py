"""`serve.packed_linear`: oneDNN-packed Linear weights give the same logits (to 1e-4) and greedy answers as the
unpacked model, free the unpacked storage, skip tied weights, keep LoRA adapters working, and serve over HTTP."""

import pytest
import torch

from glmtune.inference.packed import apply_packed_linear, pack_linears, packable

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")

PROMPTS = [[{"role": "user", "content": "你好，今天天气怎么样？"}],
           [{"role": "user", "content": "Write a haiku about rivers."}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]]


def _load(path, adapters=None, packed=False):
    from glmtune.serve.loading import load_served

    return load_served(model=str(path), adapters=adapters, name="tiny", packed_linear=packed)


@pytest.fixture(scope="module")
def pair(tiny_glm4, adapters):
    return _load(tiny_glm4, adapters), _load(tiny_glm4, adapters, packed=True)


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_logits_match_and_weights_freed(pair):
    plain, packed = pair
    ids = torch.tensor([plain.engine.prompt_ids(PROMPTS[0])])
    with plain.engine.model.disable_adapter(), packed.engine.model.disable_adapter():
        a, b = _logits(plain.engine.model, ids), _logits(packed.engine.model, ids)
        assert a.shape == b.shape and a.abs().max() > 0.1
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    linears = [(n, m) for n, m in packed.engine.model.named_modules() if type(m) is torch.nn.Linear]
    done = [m for n, m in linears if "lora_" not in n]
    assert done and all(hasattr(m, "_packed_weight") and m.weight.numel() == 0 for m in done)
    assert all(not hasattr(m, "_packed_weight") for n, m in linears if "lora_" in n)
    # the stale weight cannot be used by mistake
    with pytest.raises(RuntimeError):
        torch.nn.functional.linear(torch.randn(1, done[0].in_features), done[0].weight)


def test_lora_adapters_still_apply_after_packing(pair):
    plain, packed = pair
    ids = torch.tensor([plain.engine.prompt_ids(PROMPTS[1])])
    for adapter in ("alpha", "beta"):
        plain.engine.model.set_adapter(adapter)
        packed.engine.model.set_adapter(adapter)
        on_plain, on_packed = _logits(plain.engine.model, ids), _logits(packed.engine.model, ids)
        torch.testing.assert_close(on_packed, on_plain, atol=1e-4, rtol=0)
        with packed.engine.model.disable_adapter():
            off_packed = _logits(packed.engine.model, ids)
        assert (on_packed - off_packed).abs().max() > 1e-2  # the adapter still changes the logits
        assert plain.engine.generate(PROMPTS, max_new_tokens=12) == packed.engine.generate(PROMPTS, max_new_tokens=12)
    with plain.engine.model.disable_adapter(), packed.engine.model.disable_adapter():
        assert plain.engine.generate(PROMPTS, max_new_tokens=12) == packed.engine.generate(PROMPTS, max_new_tokens=12)


def test_tied_embeddings_are_skipped():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 64, (2, 7))
    before = _logits(model, ids)
    counts = pack_linears(model)
    assert counts == {"packed": 2 * 7, "skipped_tied": 1, "skipped_other": 0}
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.lm_head.weight.shape == (64, 32)
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-4, rtol=0)
    assert pack_linears(model)["packed"] == 0  # packing twice does nothing


def test_not_applied_says_why():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4)).to(torch.bfloat16)
    assert "float32 only" in packable(model)
    assert apply_packed_linear(model).startswith("serve.packed_linear not applied: ")
    with pytest.raises(ValueError, match="float32 only"):
        pack_linears(model)
    assert model[0].weight.numel() == 16  # untouched


def test_served_packed_answers_like_unpacked(pair, start_app):
    from glmtune.serve.api import create_app, serve_in_thread
    from glmtune.serve.config import ServeSection

    import openai

    def client(url):
        return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)

    plain, packed = pair
    url_plain, _ = start_app()  # the session's unpacked `served` fixture
    cfg = ServeSection(max_prompt_tokens=256, max_new_tokens=128, packed_linear=True)
    server, url = serve_in_thread(create_app(packed, cfg))
    try:
        for model in ("tiny", "alpha", "beta"):
            for msg in PROMPTS:
                ask = [client(u).chat.completions.create(model=model, messages=msg, max_tokens=12, temperature=0)
                       .choices[0].message.content for u in (url_plain, url)]
                assert ask[0] == ask[1]
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)


def test_load_served_prints_one_line(tiny_glm4, capsys):
    _load(tiny_glm4, packed=True)
    out = [line for line in capsys.readouterr().out.splitlines() if "packed_linear" in line]
    assert len(out) == 1 and "Linear layers packed" in out[0], out
