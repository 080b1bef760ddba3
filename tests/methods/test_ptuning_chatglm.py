"""P-Tuning v2 on converted ChatGLM3 as the official finetune_demo defines it (`pre_seq_len`, `prefix_projection`).

tests/fixtures/make_chatglm_logits.py ran the ORIGINAL ChatGLM3 modeling code (transformers 4.40.2) with
`pre_seq_len`/`prefix_projection` set in its config, i.e. with its own `PrefixEncoder`, and saved that encoder's
weights (`prefix_encoder.safetensors`) and the logits. Here glmtune converts the base to native Glm, prepares its
P-Tuning (PEFT prefix, official encoder shape), puts the official encoder weights in, and must give the same logits
and greedy tokens; the adapter it saves loads back on a fresh conversion and gives them again.
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


def _forward(model, ids):
    """The model with its learned prefix, run as glmtune's batching engine runs it (the base model, a KV cache
    started from `get_prompt`), with ChatGLM3's position numbering: the real tokens count from 0 behind the
    prefix. (PEFT's own forward, used in training, counts them after the virtual tokens; the prefix keys are not
    rotated, so that numbering gives other logits: 0.27 / 1.57 max |dlogit| on these two fixtures.)"""
    from transformers import DynamicCache

    prompt = model.get_prompt(batch_size=ids.shape[0])
    cache = DynamicCache(ddp_cache_data=[(layer.keys, layer.values) for layer in prompt.layers])
    n_virtual = prompt.layers[0].keys.shape[2]
    return model.get_base_model()(
        input_ids=ids, past_key_values=cache, position_ids=torch.arange(ids.shape[1])[None],
        attention_mask=torch.ones(ids.shape[0], n_virtual + ids.shape[1], dtype=torch.long)).logits


def _check_reference(model, ref, variant):
    ids = torch.tensor([ref["input_ids"]])
    want = load_file(str(EQUIV / variant / "reference_logits.safetensors"))["logits"]
    with torch.no_grad():
        got = _forward(model, ids)[0]
        delta = (got - want).abs().max().item()
        assert delta < 1e-5, f"{variant}: max |dlogit| {delta}"
        seq = ids
        for _ in ref["greedy_ids"]:
            seq = torch.cat([seq, _forward(model, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
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
    again = _load_converted(variant, tmp_path / "again", monkeypatch) if (tmp_path / "again").mkdir() is None else None
    reloaded = method.load_trained(again, tmp_path / "adapter", cfg.method)
    _check_reference(reloaded.eval(), ref, variant)


def test_prefix_projection_is_the_official_mlp(tmp_path, monkeypatch):
    """The KV prefix the model attends to = tanh MLP of the official encoder, computed here independently:
    Linear(W, hidden_size) -> tanh -> Linear(hidden_size, W) on Embedding(pre_seq_len, W), W = layers*2*kv*hd,
    split per layer as ChatGLM3's get_prompt does (view [P, layers*2, kv_heads, hd], keys then values)."""
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
    for i, layer in enumerate(layers):
        torch.testing.assert_close(layer.keys[0], kv[2 * i], rtol=0, atol=1e-6)
        torch.testing.assert_close(layer.values[0], kv[2 * i + 1], rtol=0, atol=1e-6)


def test_prefix_hidden_defaults_to_the_model_width_on_converted_chatglm(tmp_path, monkeypatch):
    """Official ChatGLM: the projection MLP is as wide as the model; an explicit method.prefix_hidden wins."""
    loaded = _load_converted("chatglm3-6b-ptuning-projection", tmp_path, monkeypatch)
    for extra, width in (([], loaded.model.config.hidden_size), (["method.prefix_hidden=24"], 24)):
        cfg = load_config(None, ["method.name=ptuning", "method.pre_seq_len=3", "method.prefix_projection=true",
                                 "train.gradient_checkpointing=false", *extra])
        fresh = _load_converted("chatglm3-6b-ptuning-projection", tmp_path / f"w{width}", monkeypatch) \
            if (tmp_path / f"w{width}").mkdir() is None else None
        model = get("ptuning").prepare(fresh, cfg.method, cfg.train)
        assert model.prompt_encoder["default"].transform[0].out_features == width
