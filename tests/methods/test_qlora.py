"""QLoRA specifics: bnb configs, train -> eval(generate) -> train on CPU, 8-bit bases, dequantising merge."""

import pytest
import torch

from glmtune.config import load_config
from glmtune.methods import get
from glmtune.methods.qlora import keep_standard_4bit_layout
from glmtune.train.trainer import load_for_training


def qcfg(*extra):
    return load_config(None, ["method.name=qlora", "model.path=tiny:glm4", "method.dropout=0", *extra])


def prepared(*extra):
    cfg = qcfg(*extra)
    method, loaded = load_for_training(cfg)
    return cfg, method.prepare(loaded, cfg.method, cfg.train)


def test_bnb_config_follows_the_method_section():
    m = get("qlora")
    q = m.quantization(qcfg("method.quant_type=fp4", "method.double_quant=false").method, qcfg().train)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "fp4" and not q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float32
    bf = qcfg("train.precision=bf16")
    assert m.quantization(bf.method, bf.train).bnb_4bit_compute_dtype == torch.bfloat16
    assert m.quantization(qcfg("method.bits=8").method, qcfg().train).load_in_8bit


def _loss_and_grads(model, ids):
    model.train()
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("extra", [[], ["method.double_quant=false"], ["method.bits=8"]],
                         ids=["nf4-double", "nf4", "int8"])
def test_train_eval_generate_train_keeps_weights_and_gradients(extra):
    _, model = prepared(*extra)
    torch.manual_seed(0)
    ids = torch.randint(20, 1000, (2, 12))
    base_state = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    loss1, g1 = _loss_and_grads(model, ids)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
        model.generate(input_ids=ids[:1, :5], attention_mask=torch.ones(1, 5, dtype=torch.long),
                       max_new_tokens=3, do_sample=False)
    loss2, g2 = _loss_and_grads(model, ids)
    assert loss2 == pytest.approx(loss1, abs=1e-6)
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], atol=1e-6, rtol=1e-5)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p.detach(), base_state[n]), f"{n} changed across eval"


def test_bnb_cpu_packing_is_the_cause():
    """Documents the upstream behaviour we guard against: without the guard, an eval forward re-packs the
    4-bit weight in place and a training forward then fails (GLM-4's q_proj has a bias)."""
    import bitsandbytes as bnb

    cfg = qcfg()
    method, loaded = load_for_training(cfg)
    layer = next(m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    if not layer.support_avx512bf16_for_cpu:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never re-packs here")
    x = torch.randn(2, layer.in_features)
    layer.eval()
    with torch.no_grad():
        layer(x)
    assert layer.weight.quant_state.packing_format_for_cpu
    layer.train()
    with pytest.raises(RuntimeError, match="in-place"):
        layer(x.requires_grad_())
    with pytest.raises(RuntimeError, match="already in bnb's CPU-inference layout"):
        keep_standard_4bit_layout(loaded.model)


def test_merge_of_8bit_base_is_base_plus_delta():
    """LLM.int8 quantises activations too, so merged and adapter logits differ by that noise; the merged
    *weights* must equal the original fp32 weights + the LoRA delta up to the 8-bit weight error."""
    from transformers import AutoModelForCausalLM

    cfg, model = prepared("method.bits=8")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a non-zero adapter, so the merge has something to fold in
    name = "model.layers.0.self_attn.q_proj"
    lora_layer = model.get_base_model().get_submodule(name)
    delta = lora_layer.get_delta_weight("default")
    merged = get("qlora").merge(model)
    original = AutoModelForCausalLM.from_pretrained(model.get_base_model().name_or_path)
    w0 = original.get_submodule(name).weight
    w = merged.get_submodule(name).weight
    assert delta.abs().max() > 1e-2
    assert (w - (w0 + delta)).abs().max() < 0.01 * w0.abs().max()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.randint(20, 1000, (2, 9))
    model.eval()
    with torch.no_grad():
        ref, out = model(input_ids=ids).logits, merged(input_ids=ids).logits
    assert (ref - out).abs().max() < 0.05 * ref.abs().max()
