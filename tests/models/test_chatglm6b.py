"""ChatGLM-6B (fp16, INT4, INT8, P-Tuning v2) -> glmtune's native class, checked against the original code.

The fixtures in tests/assets/chatglm6b_equiv/ were written by tests/fixtures/make_chatglm6b_logits.py, which ran
the ORIGINAL modeling_chatglm.py and quantization.py (tests/assets/real/chatglm-6b/) under transformers 4.30.2 on
tiny random weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EQUIV = ROOT / "tests" / "assets" / "chatglm6b_equiv"
REAL = ROOT / "tests" / "assets" / "real" / "chatglm-6b"
VARIANTS = sorted(p.name for p in EQUIV.iterdir())


def src_folder(variant: str, dest: Path) -> Path:
    """The fixture checkpoint + the real ChatGLM-6B tokenizer and code files, as a download holds them."""
    dest.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(EQUIV / variant / f, dest / f)
    for f in ("ice_text.model", "tokenizer_config.json", "tokenization_chatglm.py", "configuration_chatglm.py",
              "modeling_chatglm.py", "quantization.py", "LICENSE", "MODEL_LICENSE"):
        shutil.copy2(REAL / f, dest / f)
    return dest


def load_native(dst: Path, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    from glmtune.models.chatglm6b import register

    register()
    return AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32, **overrides).eval()


def test_variants_present():
    assert set(VARIANTS) == {"chatglm-6b", "chatglm-6b-1d", "chatglm-6b-int4", "chatglm-6b-int8",
                             "chatglm-6b-ptuning"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_native_logits_and_greedy_equal_original_code(variant, tmp_path):
    import torch
    from safetensors.torch import load_file

    from glmtune.models.convert import convert

    ref = json.loads((EQUIV / variant / "reference.json").read_text())
    ref_logits = load_file(str(EQUIV / variant / "reference_logits.safetensors"))["logits"]
    res = convert(src_folder(variant, tmp_path / "src"), tmp_path / "dst", dtype="float32")
    bits = ref["config_changes"].get("quantization_bit", 0)
    assert res.dequantized == (8 if bits else 0)  # 4 linear layers x 2 blocks
    assert "lm_head.weight" in res.dropped and sum(".rotary_emb.inv_freq" in d for d in res.dropped) == 2
    overrides = {}
    if (EQUIV / variant / "prefix_encoder.safetensors").exists():
        overrides = dict(pre_seq_len=ref["config_changes"]["pre_seq_len"],
                         prefix_projection=ref["config_changes"]["prefix_projection"])
    model = load_native(tmp_path / "dst", **overrides)
    assert type(model).__name__ == "ChatGLM6BForCausalLM"
    if overrides:
        model.transformer.prefix_encoder.load_state_dict(load_file(str(EQUIV / variant / "prefix_encoder.safetensors")))
    ids = torch.tensor(ref["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == ref_logits.shape
    diff = (logits - ref_logits).abs().max().item()
    assert diff <= 1e-5, f"{variant}: max |native - original| = {diff}"
    # greedy, recomputing the whole row each step (as the fixture) ...
    seq = ids[:1]
    with torch.no_grad():
        for _ in range(len(ref["greedy_ids"])):
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert seq[0, ids.shape[1]:].tolist() == ref["greedy_ids"]
    # ... and through generate() with the KV cache (positions/mask rebuilt from the whole row each step)
    out = model.generate(input_ids=ids[:1], attention_mask=torch.ones_like(ids[:1]), do_sample=False,
                         max_new_tokens=len(ref["greedy_ids"]), eos_token_id=None, pad_token_id=0)
    assert out[0, ids.shape[1]:].tolist() == ref["greedy_ids"]


def test_left_padding_changes_nothing(tmp_path):
    """A left-padded batch row gives the same logits as the row alone (positions count real tokens only)."""
    import torch

    from glmtune.models.convert import convert

    ref = json.loads((EQUIV / "chatglm-6b" / "reference.json").read_text())
    convert(src_folder("chatglm-6b", tmp_path / "src"), tmp_path / "dst", dtype="float32")
    model = load_native(tmp_path / "dst")
    row = ref["input_ids"][0]
    short = row[2:]  # a shorter prompt, padded on the left to the long one's length
    ids = torch.tensor([row, [3, 3] + short])
    mask = torch.tensor([[1] * len(row), [0, 0] + [1] * len(short)])
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=torch.tensor([short])).logits
        first = model(input_ids=torch.tensor([row])).logits
    assert (batched[1, 2:] - alone[0]).abs().max().item() <= 1e-5
    assert (batched[0] - first[0]).abs().max().item() <= 1e-5
    gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=4, eos_token_id=None,
                         pad_token_id=3)
    gen_alone = model.generate(input_ids=torch.tensor([short]), do_sample=False, max_new_tokens=4, eos_token_id=None,
                               pad_token_id=3)
    assert gen[1, len(row):].tolist() == gen_alone[0, len(short):].tolist()


def _kernel_dequant_int4(byte_rows, scales):
    """The INT4 release's CPU `extract_int4_weight_to_float`, one byte at a time in plain Python:
    out[2j] = s * ((signed char)b >> 4), out[2j+1] = s * ((signed char)(b << 4) >> 4)."""
    out = []
    for row, s in zip(byte_rows, scales):
        vals = []
        for b in row:
            b &= 0xFF
            hi = (b - 256 if b >= 128 else b) >> 4  # arithmetic shift of the signed char
            lo = ((b << 4) & 0xFF)
            lo = (lo - 256 if lo >= 128 else lo) >> 4
            vals += [hi * s, lo * s]
        out.append(vals)
    return out


@pytest.mark.parametrize("bits", [4, 8])
def test_dequantized_weights_match_the_kernel_formula(bits, tmp_path):
    """Every dequantized layer of the INT4/INT8 fixture equals the kernels' formula (fp16), and re-quantizing it
    with the original QuantizedLinear scheme gives back the checkpoint's bytes."""
    import torch
    from safetensors.torch import load_file

    from glmtune.models.convert import convert
    from glmtune.models.convert_chatglm6b import dequantize, quantize

    variant = f"chatglm-6b-int{bits}"
    state = load_file(str(EQUIV / variant / "model.safetensors"))
    convert(src_folder(variant, tmp_path / "src"), tmp_path / "dst")  # keeps the checkpoint's dtype
    conv = {}
    for f in (tmp_path / "dst").glob("*.safetensors"):
        conv.update(load_file(str(f)))
    names = [n[: -len("_scale")] for n in state if n.endswith(".weight_scale")]
    assert len(names) == 8
    for name in names:
        w, s = state[name], state[name + "_scale"]
        assert w.dtype == torch.int8 and s.dtype == torch.float16
        if bits == 4:
            want = torch.tensor(_kernel_dequant_int4(w.tolist(), s.float().tolist())).half()
        else:
            want = (w.float() * s.float()[:, None]).half()
        assert conv[name].dtype == torch.float32  # the tiny config's torch_dtype
        assert torch.equal(conv[name], want.float()), name
        assert torch.equal(dequantize(w, s, bits), want)
        q, s2 = quantize(want, bits)
        assert torch.equal(q, w) and torch.equal(s2, s), f"{name}: re-quantized bytes differ"


def test_bad_quantized_checkpoints_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from glmtune.models.convert import ConvertError, convert

    src = src_folder("chatglm-6b-int4", tmp_path / "src")
    state = load_file(str(src / "model.safetensors"))
    del state["transformer.layers.1.mlp.dense_4h_to_h.weight_scale"]
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(ConvertError, match="dense_4h_to_h: has a weight but no weight_scale"):
        convert(src, tmp_path / "dst")
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_bit"] = 3
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match="quantization_bit=3"):
        convert(src, tmp_path / "dst2")


@pytest.mark.parametrize("two_d", [True, False])
def test_decode_positions_equal_whole_row_positions(two_d):
    """What glmtune's server feeds one decoded token at a time equals the whole-row 2D positions."""
    import torch

    from glmtune.models.chatglm6b import ChatGLM6BConfig, ChatGLM6BForCausalLM, positions_and_mask

    cfg = ChatGLM6BConfig(vocab_size=400, hidden_size=32, num_layers=1, num_attention_heads=4, inner_hidden_size=48,
                          mask_token_id=378, gmask_token_id=379, bos_token_id=380, eos_token_id=381,
                          position_encoding_2d=two_d)
    model = ChatGLM6BForCausalLM(cfg)
    for prompt in ([5, 6, 7, 379, 380], [5, 378, 7, 8, 380], [5, 6, 7]):
        row = prompt + [11, 12, 13]
        pos, _ = positions_and_mask(torch.tensor([row]), None, cfg)
        for i in range(len(prompt), len(row)):
            assert model.decode_position_ids(prompt, i) == pos[0, ..., i:i + 1].tolist(), (prompt, i)


def test_lora_all_targets_every_linear_but_the_head():
    from peft.tuners.lora import LoraLayer

    from glmtune.methods.lora import LoraConfig, wrap_with_lora
    from glmtune.models.chatglm6b import ChatGLM6BConfig, ChatGLM6BForCausalLM
    from glmtune.models.families import family_of

    cfg = ChatGLM6BConfig(vocab_size=400, hidden_size=32, num_layers=2, num_attention_heads=4, inner_hidden_size=48)
    model = wrap_with_lora(ChatGLM6BForCausalLM(cfg), LoraConfig(targets="all"), family_of("glmtune_chatglm6b"))
    adapted = {n for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    assert len(adapted) == 8 and not any("lm_head" in n or "word_embeddings" in n for n in adapted)


def test_cli_convert_int4(tmp_path):
    """`glmtune convert` on an INT4 folder: one note naming the route, a folder transformers loads natively."""
    import os
    import subprocess
    import sys

    src = src_folder("chatglm-6b-int4", tmp_path / "src")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLMTUNE_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "glmtune", "convert", str(src), str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "to glmtune's native ChatGLM-6B class" in r.stderr and "8 INT4 layers dequantized" in r.stderr
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "glmtune_chatglm6b" and "quantization_bit" not in cfg and "auto_map" not in cfg
    note = json.loads((tmp_path / "out" / "glmtune_converted.json").read_text())
    assert note["quantization_bit"] == 4 and note["dequantized_layers"] == 8
    assert (tmp_path / "out" / "MODEL_LICENSE").exists() and (tmp_path / "out" / "tokenizer.json").exists()


@pytest.mark.parametrize("pre_seq_len", [None, 4])
def test_gradient_checkpointing_gives_the_same_gradients(pre_seq_len):
    import torch

    from glmtune.models.chatglm6b import ChatGLM6BConfig, ChatGLM6BForCausalLM

    cfg = ChatGLM6BConfig(vocab_size=400, hidden_size=32, num_layers=2, num_attention_heads=4, inner_hidden_size=48,
                          mask_token_id=378, gmask_token_id=379, bos_token_id=380, eos_token_id=381,
                          pre_seq_len=pre_seq_len, prefix_projection=True)
    torch.manual_seed(0)
    model = ChatGLM6BForCausalLM(cfg)
    ids = torch.tensor([[5, 6, 7, 379, 380, 11, 12, 13]])
    labels = torch.tensor([[-100] * 5 + [11, 12, 13]])

    def grads():
        model.zero_grad()
        model.train()
        model(input_ids=ids, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    if pre_seq_len:
        model.transformer.prefix_dropout.p = 0.0
    plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.transformer.layers)  # the blocks really recompute
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and len(plain) > 5
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-6), n


def test_vllm_backend_refuses_chatglm6b_by_name(tmp_path):
    from glmtune.serve.vllm import VllmError, make_plan

    src = src_folder("chatglm-6b", tmp_path / "src")
    with pytest.raises(VllmError, match="ChatGLM-6B runs as glmtune's own model class"):
        make_plan(None, str(src))
