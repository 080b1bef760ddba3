"""LoRA `targets: all` adapts every linear layer but the output head, never embeddings, in every family."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
EQUIV = ROOT / "tests" / "assets" / "chatglm_equiv"
REAL = ROOT / "tests" / "assets" / "real"
SMALL = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def native(kind: str):
    import transformers as T

    cfg = {"glm": T.GlmConfig, "glm4": T.Glm4Config, "llama": T.LlamaConfig, "qwen2": T.Qwen2Config}[kind](
        **SMALL, pad_token_id=0)
    return T.AutoModelForCausalLM.from_config(cfg)


def remote_chatglm(real: str, tmp: Path):
    """The ORIGINAL remote-code module tree (tiny config). Its code needs `config.max_length` under transformers 5
    (the breakage issue 13 describes); set here only so the module tree can be built and inspected."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tmp.mkdir()
    for f in ("configuration_chatglm.py", "modeling_chatglm.py"):
        shutil.copy2(REAL / real / f, tmp / f)
    (tmp / "quantization.py").write_text("")  # imported lazily by ChatGLM3's quantize(); never called here
    shutil.copy2(EQUIV / ("chatglm3-6b" if real == "chatglm3-6b" else "glm-4-9b-chat") / "config.json",
                 tmp / "config.json")
    cfg = AutoConfig.from_pretrained(tmp, trust_remote_code=True)
    cfg.max_length = cfg.seq_length
    return AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)


def wrap_all(model, family_name: str):
    from glmtune.methods.lora import LoraConfig, wrap_with_lora
    from glmtune.models.families import FAMILIES, GENERIC

    family = next((f for f in FAMILIES if f.name == family_name), GENERIC)
    return wrap_with_lora(model, LoraConfig(targets="all"), family)


def check(peft_model, heads: set[str]):
    from peft.tuners.lora import LoraLayer

    adapted = {n for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    base = peft_model.get_base_model()
    plain = {n for n, m in base.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoraLayer)
             and ".lora_" not in n and not n.endswith(("base_layer",))}
    embeddings = {n for n, m in base.named_modules() if isinstance(m, nn.Embedding) and ".lora_" not in n}
    adapted_leaf = {n.rsplit(".", 1)[-1] for n in adapted}
    assert adapted, "nothing adapted"
    assert not adapted_leaf & heads, f"head adapted: {sorted(adapted_leaf & heads)}"
    assert not {n for n in adapted if n in embeddings}, "an embedding got LoRA"
    # every linear layer but the head is adapted: no plain nn.Linear is left outside the head
    left = {n for n in plain if n.rsplit(".", 1)[-1] not in heads}
    assert not left, f"linear layers left out: {sorted(left)[:5]}"
    return adapted


@pytest.mark.parametrize("kind", ["glm", "glm4", "llama", "qwen2"])
def test_all_excludes_head_native(kind):
    adapted = check(wrap_all(native(kind), kind), {"lm_head"})
    assert any(n.endswith("q_proj") for n in adapted) and any(n.endswith("down_proj") for n in adapted)


@pytest.mark.parametrize("real", ["chatglm3-6b", "glm-4-9b-chat"])
def test_all_excludes_output_layer_remote_chatglm(real, tmp_path):
    from peft import get_peft_model

    from glmtune.methods.lora import LoraConfig, peft_lora_config
    from glmtune.models.families import family_of

    model = remote_chatglm(real, tmp_path / "m")
    adapted = check(wrap_all(model, "chatglm"), {"output_layer"})
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    # What PEFT's "all-linear" alone would do here (the bug in issue 13): the remote code declares no output
    # embeddings, so the head gets LoRA too.
    bare = get_peft_model(remote_chatglm(real, tmp_path / "bare"),
                          peft_lora_config(LoraConfig(targets="all"), family_of("chatglm")))
    assert any(n.endswith("output_layer.lora_A") for n, _ in bare.named_modules())


def test_all_excludes_head_converted_chatglm(tmp_path):
    from transformers import AutoModelForCausalLM

    from glmtune.models.convert import convert

    src = tmp_path / "src"
    src.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(EQUIV / "chatglm3-6b" / f, src / f)
    for f in ("tokenizer.model", "tokenizer_config.json", "tokenization_chatglm.py"):
        shutil.copy2(REAL / "chatglm3-6b" / f, src / f)
    convert(src, tmp_path / "dst")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dst")
    check(wrap_all(model, "glm"), {"lm_head"})
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["model_type"] == "glm"
