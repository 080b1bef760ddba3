"""P-Tuning v2 on converted ChatGLM3 as the official finetune_demo defines it (`pre_seq_len`, `prefix_projection`).

tests/fixtures/make_chatglm_logits.py ran the ORIGINAL ChatGLM3 modeling code (transformers 4.40.2) with
`pre_seq_len`/`prefix_projection` set in its config, i.e. with its own `PrefixEncoder`, and saved that encoder's
weights (`prefix_encoder.safetensors`) and the logits. Here glmtune converts the base to native Glm, prepares its
P-Tuning (PEFT prefix, official encoder shape), puts the official encoder weights in, and must give the same logits
and greedy tokens (through PEFT's forward, as in training, and through the batching engine that serves and
predicts); the adapter it saves loads back on a fresh conversion and gives them again.

ChatGLM3 numbers the real tokens from 0 behind its prefix, PEFT after it; glmtune's `official_prefix_positions`
makes them agree (without it: max |dlogit| 0.27 / 1.57 on these fixtures, see test_numbering_matters).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glmtune.config import load_config
from glmtune.methods import get

ROOT = Path(__file__).resolve().parents[2]
EQUIV = ROOT / "tests" / "assets" / "chatglm_equiv"
REAL = ROOT / "tests" / "assets" / "real" / "chatglm3-6b"
# official PrefixEncoder names -> PEFT PrefixEncoder names
RENAME = {"embedding.weight": "embedding.weight", "trans.0.weight": "transform.0.weight",
          "trans.0.bias": "transform.0.bias", "trans.2.weight": "transform.2.weight", "trans.2.bias": "transform.2.bias"}


def _load_converted(variant, tmp_path, monkeypatch):
    from glmtune.config.schema import ModelSection
    from glmtune.models.load import load

    src = tmp_path / variant
    src.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(EQUIV / variant / f, src / f)
    for f in ("tokenizer.model", "tokenizer_config.json", "tokenization_chatglm.py", "configuration_chatglm.py",
              "modeling_chatglm.py"):
        shutil.copy2(REAL / f, src / f)
    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path / "cache"))
    return load(ModelSection(path=str(src), trust_remote_code=True, dtype="float32"))


def _prepared(variant, tmp_path, monkeypatch):
    ref = json.loads((EQUIV / variant / "reference.json").read_text())
    pt = ref["ptuning"]
    cfg = load_config(None, ["method.name=ptuning", f"method.pre_seq_len={pt['pre_seq_len']}",
                             f"method.prefix_projection={str(pt['prefix_projection']).lower()}",
                             "train.gradient_checkpointing=false"])
    loaded = _load_converted(variant, tmp_path, monkeypatch)
    assert type(loaded.model).__name__ == "GlmForCausalLM"  # the converted model, not the remote code
    method = get("ptuning")
    model = method.prepare(loaded, cfg.method, cfg.train)
    official = load_file(str(EQUIV / variant / "prefix_encoder.safetensors"))
    # strict: the shapes must be the official ones, so its checkpoint loads as is
    model.prompt_encoder["default"].load_state_dict({RENAME[k]: v for k, v in official.items()})
    return model.eval(), ref, official, cfg, method, loaded


def _check_reference(model, ref, variant):
    ids = torch.tensor([ref["input_ids"]])
    want = load_file(str(EQUIV / variant / "reference_logits.safetensors"))["logits"]
    with torch.no_grad():
        got = model(input_ids=ids).logits[0]  # PEFT's forward: the path training takes
        delta = (got - want).abs().max().item()
        assert delta < 1e-5, f"{variant}: max |dlogit| {delta}"
        seq = ids
        for _ in ref["greedy_ids"]:
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert seq[0, ids.shape[1]:].tolist() == ref["greedy_ids"]
    return got


@pytest.mark.parametrize("variant", ["chatglm3-6b-ptuning", "chatglm3-6b-ptuning-projection"])
def test_official_prefix_on_converted_model_equals_original_code(variant, tmp_path, monkeypatch):
    model, ref, _, cfg, method, _ = _prepared(variant, tmp_path, monkeypatch)
    got = _check_reference(model, ref, variant)
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=torch.tensor([ref["input_ids"]])).logits[0]
    assert (got - base).abs().max().item() > 1e-2, "the prefix must change the answer (else this test proves nothing)"
    # the adapter glmtune saves loads back on a fresh conversion of the same folder and answers the same
    method.save_trained(model, tmp_path / "adapter")
    (tmp_path / "again").mkdir()
    again = _load_converted(variant, tmp_path / "again", monkeypatch)
    reloaded = method.load_trained(again, tmp_path / "adapter", cfg.method)
    _check_reference(reloaded.eval(), ref, variant)


def test_prefix_projection_is_the_official_mlp(tmp_path, monkeypatch):
    """The KV prefix the model attends to = tanh MLP of the official encoder, computed here independently:
    Linear(W, hidden_size) -> tanh -> Linear(hidden_size, W) on Embedding(pre_seq_len, W), W = layers*2*kv*hd,
    split per layer as ChatGLM3's get_prompt does (view [P, layers*2, kv_heads, hd], keys then values)."""
    assert json.loads((EQUIV / "chatglm3-6b-ptuning-projection" / "config.json").read_text()).get("rope_ratio", 1) == 1
    variant = "chatglm3-6b-ptuning-projection"
    model, ref, off, _, _, loaded = _prepared(variant, tmp_path, monkeypatch)
    c = loaded.model.config
    hidden = torch.tanh(off["embedding.weight"] @ off["trans.0.weight"].T + off["trans.0.bias"])
    flat = hidden @ off["trans.2.weight"].T + off["trans.2.bias"]
    assert off["trans.0.weight"].shape == (c.hidden_size, c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim)
    P = ref["ptuning"]["pre_seq_len"]
    kv = flat.view(P, c.num_hidden_layers * 2, c.num_key_value_heads, c.head_dim).permute(1, 2, 0, 3)
    with torch.no_grad():
        prompt = model.get_prompt(batch_size=1)
    layers = prompt.layers
    assert len(layers) == c.num_hidden_layers
    # keys are then turned by position P (official_prefix_positions): the first half of each head (ChatGLM's
    # rotary part) in interleaved pairs (x0, x1) by angle P * theta^(-j / (head_dim / 4)), theta = 10000
    rot = c.head_dim // 2
    angle = P * 10000.0 ** (-torch.arange(rot // 2, dtype=torch.float64) / (rot // 2))
    cos, sin = angle.cos().float(), angle.sin().float()
    for i, layer in enumerate(layers):
        k = kv[2 * i].clone()
        x0, x1 = k[..., 0:rot:2].clone(), k[..., 1:rot:2].clone()
        k[..., 0:rot:2], k[..., 1:rot:2] = x0 * cos - x1 * sin, x1 * cos + x0 * sin
        torch.testing.assert_close(layer.keys[0], k, rtol=0, atol=1e-5)
        torch.testing.assert_close(layer.values[0], kv[2 * i + 1], rtol=0, atol=1e-6)


def test_prefix_hidden_defaults_to_the_model_width_on_converted_chatglm(tmp_path, monkeypatch):
    """Official ChatGLM: the projection MLP is as wide as the model; an explicit method.prefix_hidden wins."""
    loaded = _load_converted("chatglm3-6b-ptuning-projection", tmp_path, monkeypatch)
    for extra, width in (([], loaded.model.config.hidden_size), (["method.prefix_hidden=24"], 24)):
        cfg = load_config(None, ["method.name=ptuning", "method.pre_seq_len=3", "method.prefix_projection=true",
                                 "train.gradient_checkpointing=false", *extra])
        (tmp_path / f"w{width}").mkdir()
        fresh = _load_converted("chatglm3-6b-ptuning-projection", tmp_path / f"w{width}", monkeypatch)
        model = get("ptuning").prepare(fresh, cfg.method, cfg.train)
        assert model.prompt_encoder["default"].transform[0].out_features == width


@pytest.mark.parametrize("variant", ["chatglm3-6b-ptuning-projection"])
def test_batching_engine_answers_as_the_original_code(variant, tmp_path, monkeypatch):
    """Serve/predict/chat generate through the batching engine (KV cache started from the prefix): its greedy
    tokens are the original code's (which recomputed the whole sequence each step)."""
    from glmtune.inference.batching import BatchingEngine
    from glmtune.inference.engine import HFEngine

    model, ref, _, _, _, loaded = _prepared(variant, tmp_path, monkeypatch)
    engine = HFEngine(model, loaded.tokenizer, loaded.family)
    engine.stop_ids = []  # random weights: compare every one of the reference's greedy tokens
    be = BatchingEngine(engine, max_batch_size=2)
    try:
        got = be.generate(list(ref["input_ids"]), max_new_tokens=len(ref["greedy_ids"])).tokens
    finally:
        be.close()
    assert got == ref["greedy_ids"]


def test_numbering_matters(tmp_path, monkeypatch):
    """Without the official numbering the same prefix gives other logits: the fixture can tell them apart."""
    from transformers import DynamicCache

    variant = "chatglm3-6b-ptuning"
    model, ref, _, _, _, _ = _prepared(variant, tmp_path, monkeypatch)
    want = load_file(str(EQUIV / variant / "reference_logits.safetensors"))["logits"]
    ids = torch.tensor([ref["input_ids"]])
    with torch.no_grad():
        raw = model.prompt_encoder["default"](model.prompt_tokens["default"][None])
        c = model.get_base_model().config
        kv = raw.view(1, -1, c.num_hidden_layers * 2, c.num_key_value_heads, c.head_dim).permute(2, 0, 3, 1, 4)
        cache = DynamicCache(ddp_cache_data=[(kv[2 * i], kv[2 * i + 1]) for i in range(c.num_hidden_layers)])
        peft_numbering = model.get_base_model()(input_ids=ids, past_key_values=cache).logits[0]
    assert (peft_numbering - want).abs().max().item() > 1e-2


def test_resuming_a_projection_prefix_is_refused_not_wrong(tmp_path, monkeypatch):
    """A Trainer resume loads the saved (projected) prefix into the training encoder: with the official shape it
    would fit and be projected twice; glmtune refuses with a one-line error instead."""
    from glmtune.train.launch import ResumeError

    model, *_ = _prepared("chatglm3-6b-ptuning-projection", tmp_path, monkeypatch)
    saved = model.get_prompt_embedding_to_save("default")
    from peft.utils import set_peft_model_state_dict  # what PeftModel.load_adapter (Trainer resume) calls

    with pytest.raises(ResumeError, match="prefix_projection"):
        set_peft_model_state_dict(model, {"prompt_embeddings": saved})


def test_prefix_served_as_an_extra_adapter_answers_as_the_original_code(tmp_path, monkeypatch):
    """`glmtune serve --model CHATGLM3_FOLDER --adapter pt=ADAPTER`: the adapter loaded next to the base keeps
    ChatGLM's numbering, so its greedy tokens are still the original code's; the base answers differently."""
    from glmtune.inference.batching import BASE, BatchingEngine
    from glmtune.serve.loading import load_served

    variant = "chatglm3-6b-ptuning-projection"  # its greedy tokens differ under PEFT numbering
    model, ref, _, _, method, _ = _prepared(variant, tmp_path, monkeypatch)
    method.save_trained(model, tmp_path / "adapter")
    served = load_served(model=str(tmp_path / variant), adapters={"pt": str(tmp_path / "adapter")})
    assert served.resolve("pt") == "pt"
    engine = served.engine
    engine.stop_ids = []  # random weights: compare every reference token
    be = BatchingEngine(engine, max_batch_size=2)
    try:
        n = len(ref["greedy_ids"])
        got = be.generate(list(ref["input_ids"]), max_new_tokens=n, adapter="pt").tokens
        base = be.generate(list(ref["input_ids"]), max_new_tokens=n, adapter=BASE).tokens
    finally:
        be.close()
    assert got == ref["greedy_ids"]
    assert base != got
