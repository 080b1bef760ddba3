"""Built-in facts and the estimator at real scale, against public figures.

References: LLaMA-Factory README hardware table (7B: full AMP ~120 GB, LoRA 16-bit ~16 GB, QLoRA 4-bit
~6 GB — their runs use gradient checkpointing, LF's default); GLM-4 finetune_demo "LoRA ~21 GB" for
GLM-4-9B-chat; torchtune README: Llama-3.1-8B LoRA 16.2 GiB, QLoRA 7.4 GiB on one 4090 (bs 2, 2048).
"""

import pytest

from glmtune.plan.facts import BUILTIN, CloudOnlyModel, builtin_facts, model_facts
from glmtune.plan.memory import GIB, MemorySetup, cheapest_fix, estimate, parse_gpu

BF16_GC = MemorySetup(seq=1024, batch=1, load_bytes=2, compute_bytes=2, mixed=True, gradient_checkpointing=True)


def test_parameter_counts_match_model_cards():
    expect = {"glm-4-9b-chat-hf": 9.40, "chatglm3-6b": 6.24, "llama-3-8b-instruct": 8.03,
              "qwen2.5-7b-instruct": 7.62}
    for key, billions in expect.items():
        assert BUILTIN[key].param_count() / 1e9 == pytest.approx(billions, abs=0.02), key


def test_glm4_9b_estimates_in_public_ranges():
    f = builtin_facts("THUDM/glm-4-9b-chat-hf")
    gib = {m: estimate(f, m, BF16_GC).total / GIB for m in ("full", "lora", "qlora", "ptuning", "freeze")}
    assert 140 < gib["full"] < 200        # 9.4 B × 16-18 B/param + activations
    assert 19 < gib["lora"] < 24          # finetune_demo's ~21 GB
    assert 7 < gib["qlora"] < 12          # 4-bit base ~6.3 GiB (embeddings stay bf16) + activations
    assert gib["qlora"] < gib["lora"] < gib["freeze"] < gib["full"]
    # without checkpointing, activations of 40 layers × 1024 tokens dominate LoRA
    no_gc = estimate(f, "lora", MemorySetup(seq=1024, batch=1, load_bytes=2, compute_bytes=2, mixed=True))
    assert no_gc.activations > 10 * estimate(f, "lora", BF16_GC).activations


def test_llama3_8b_against_llamafactory_and_torchtune():
    f = BUILTIN["llama-3-8b-instruct"]
    lora = estimate(f, "lora", BF16_GC).total / GIB
    qlora = estimate(f, "qlora", BF16_GC).total / GIB
    assert 15 < lora < 21 and 5 < qlora < 10
    full_no_act = estimate(f, "full", BF16_GC)
    assert (full_no_act.weights + full_no_act.gradients + full_no_act.optimizer) / 1e9 == pytest.approx(16 * 8.03, rel=0.02)


def test_cheapest_fix_order_on_a_4090():
    f = BUILTIN["glm-4-9b-chat-hf"]
    fp32_batch6 = MemorySetup(seq=1024, batch=6)
    change, est = cheapest_fix(f, "lora", fp32_batch6, parse_gpu("RTX4090-24GB").mem_gib * GIB)
    assert change.startswith("load the frozen base in 16-bit") and "gradient_checkpointing" in change
    assert est.total <= 24 * GIB
    change, est = cheapest_fix(f, "full", BF16_GC, 24 * GIB)
    assert "qlora" in change


def test_names_folders_and_cloud_models(tiny_glm4):
    assert model_facts("glm-4-9b-chat-hf").source == "built-in"
    tiny = model_facts("tiny:glm4")
    assert tiny.folder and tiny.family == "glm4" and tiny.norms_per_layer == 4
    from transformers import AutoConfig
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny.folder))
    assert tiny.param_count() == sum(p.numel() for p in model.parameters())
    for name in ("GLM-4-Flash", "glm-4-air", "GLM-4-AirX"):
        with pytest.raises(CloudOnlyModel, match="oral build --zhipu"):
            model_facts(name)
    with pytest.raises(ValueError, match="neither a checkpoint folder"):
        model_facts("no-such-model-7b")
    assert parse_gpu("rtx4090").mem_gib == 24 and parse_gpu(None, "40GB").mem_gib == 40
