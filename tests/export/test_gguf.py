"""GGUF export: llama.cpp's converter with glmtune's fixes (metadata read back), the Ollama Modelfile's
template against the run's rendering token for token, and (slow, needs llama-cpp-python) export of a
trained tiny run to GGUF checked by llama.cpp itself against transformers."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from glmtune.export.gguf import QUANTS, convert, parse_quants
from glmtune.export.merge import ExportError
from glmtune.export.ollama import (TemplateNotExpressible, check_parity, go_template, measure_template,
                                   modelfile_text, render_go_template, to_ollama_messages)

REAL = Path(__file__).resolve().parents[1] / "assets" / "real" / "glm-4-9b-chat"


def _tok(name="glm4", template=None):
    from glmtune.models.load import load_tokenizer
    from glmtune.models.tiny import ensure_tiny

    tok = load_tokenizer(ensure_tiny(name))
    if template:
        tok.chat_template = template
    return tok


def _meta(path: Path) -> dict:
    from gguf import GGUFReader

    out = {}
    for k, f in GGUFReader(str(path)).fields.items():
        if k.startswith("tokenizer.ggml.") and k.split(".")[-1] in ("tokens", "merges", "token_type", "scores"):
            continue
        out[k] = f.contents()
    return out


# ---------------------------------------------------------------- Ollama Modelfile (fast)

GLM4_GO = ('[gMASK]<sop>{{ range .Messages }}{{ if eq .Role "system" }}<|system|>\n{{ .Content }}'
           '{{ else if eq .Role "user" }}<|user|>\n{{ .Content }}{{ else if eq .Role "assistant" }}<|assistant|>\n'
           '{{ .Content }}{{ else if eq .Role "tool" }}<|observation|>\n{{ .Content }}{{ end }}{{ end }}<|assistant|>')


def test_modelfile_template_for_glm4_is_the_expected_go_template():
    tok = _tok()
    m = measure_template(tok)
    assert m["tool_role"] == "observation" and not m["skips_empty"]
    assert go_template(m) == GLM4_GO


@pytest.mark.parametrize("template", ["tiny", "real_glm4"])
def test_modelfile_template_renders_like_the_run_token_for_token(template):
    tmpl = json.loads((REAL / "tokenizer_config.json").read_text())["chat_template"] if template == "real_glm4" else None
    tok = _tok(template=tmpl)
    m = measure_template(tok)
    go = go_template(m)
    from glmtune.data.render import chat_ids

    convs = [
        [{"role": "user", "content": "你好，请介绍一下你自己。"}],
        [{"role": "system", "content": "You are a strict grader."}, {"role": "user", "content": "Score: the cat sat."},
         {"role": "assistant", "content": "3/5"}, {"role": "user", "content": "继续说下去，语速:2;停顿:3"}],
        [{"role": "user", "content": "天气?"}, {"role": "assistant", "content": "get_weather(city='北京')"},
         {"role": "observation", "content": '{"temp": 21}'}],
    ]
    for conv in convs:
        text = render_go_template(go, to_ollama_messages(conv, m["tool_role"]))
        assert tok(text, add_special_tokens=False)["input_ids"] == chat_ids(tok, conv, add_generation_prompt=True)
    assert all(p["ids_equal"] for p in check_parity(tok, go, m["tool_role"]))
    if template == "real_glm4":  # GLM-4 drops empty messages; the Go template must too
        assert m["skips_empty"] and go.startswith("[gMASK]<sop>{{ range .Messages }}{{ if .Content }}")
        conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "b"}]
        assert render_go_template(go, conv) == tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)


def test_go_renderer_subset():
    t = "{{- range .Messages }}{{ if eq .Role \"user\" }}U:{{ .Content }} {{ else if eq .Role \"x\" }}X{{ else }}" \
        "O:{{ .Role }} {{- end }}{{ end }}!"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert render_go_template(t, msgs) == "U:hi O:assistant!"
    with pytest.raises(ValueError, match="unsupported"):
        render_go_template("{{ .Messages | len }}", msgs)


def test_template_with_a_default_system_prompt_gets_no_modelfile():
    qwen_like = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
                 "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(TemplateNotExpressible, match="default system prompt"):
        measure_template(_tok(template=qwen_like))


def test_modelfile_text_has_stops_and_system():
    text = modelfile_text("model-q8_0.gguf", GLM4_GO, ["<|endoftext|>", "<|user|>", "<|observation|>"], "Be brief.")
    assert "FROM ./model-q8_0.gguf\n" in text and f'TEMPLATE """{GLM4_GO}"""' in text
    assert 'SYSTEM """Be brief."""' in text
    assert [ln for ln in text.splitlines() if ln.startswith("PARAMETER stop")] == [
        'PARAMETER stop "<|endoftext|>"', 'PARAMETER stop "<|user|>"', 'PARAMETER stop "<|observation|>"']


def test_parse_quants():
    assert parse_quants("f16, Q8_0,f16") == ["f16", "q8_0"]
    assert parse_quants(None) == ["f16"]
    with pytest.raises(ExportError, match="choose from"):
        parse_quants("q3_xxs")
    assert set(QUANTS) >= {"f16", "bf16", "q8_0", "q4_k_m"}


# ---------------------------------------------------------------- converter + fixes (no llama-cpp needed)

@pytest.mark.slow
def test_converter_writes_template_stop_ids_and_hf_glm_rope_and_eps(tmp_path):
    """HF GlmForCausalLM (glm-4-9b-chat-hf) with its real rope_theta (5e6) and eps: llama.cpp's ChatGLM
    converter alone writes 10000 / 1e-5; the GGUF must carry the config's values, the chat template and
    every stop id as eos/eot/eom."""
    from glmtune.models.tiny import ensure_tiny

    src = tmp_path / "glm"
    shutil.copytree(ensure_tiny("glm"), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_parameters"]["rope_theta"] = 5000000.0
    (src / "config.json").write_text(json.dumps(cfg))
    tok = _tok("glm")
    stops = [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    out = tmp_path / "m.gguf"
    info = convert(src, out, "f16", stops, log=lambda *_: None)
    meta = _meta(out)
    assert meta["general.architecture"] == "chatglm"
    assert meta["chatglm.rope.freq_base"] == pytest.approx(5e6)
    assert meta["chatglm.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"], rel=1e-6)
    assert [meta[f"tokenizer.ggml.{k}_token_id"] for k in ("eos", "eot", "eom")] == stops
    assert meta["tokenizer.chat_template"] == tok.chat_template
    assert f"stop id {stops[2]} written as eom" in info["fixes_applied"]


# ---------------------------------------------------------------- verified by llama.cpp (slow)

def _bigger_tiny(tmp_path: Path) -> Path:
    """A tiny GLM-4 with rows of 256 (k-quants need multiples of 256; the demo model's 128 fall back)."""
    import torch
    import transformers

    base = Path(__import__("glmtune.models.tiny", fromlist=["ensure_tiny"]).ensure_tiny("glm4"))
    cfg = transformers.AutoConfig.from_pretrained(base)
    cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_attention_heads = 256, 512, 64, 4
    torch.manual_seed(0)
    model = transformers.Glm4ForCausalLM(cfg)
    out = tmp_path / "glm4-256"
    model.save_pretrained(out)
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            shutil.copy2(f, out / f.name)
    return out


@pytest.mark.slow
def test_export_run_to_gguf_verified_by_llama_cpp(lora_run, tmp_path):
    pytest.importorskip("llama_cpp")
    from glmtune.export.gguf import export_gguf

    res = export_gguf(lora_run, "f16,q8_0", out_dir=tmp_path / "gguf", log=lambda *_: None)
    out = res.out_dir
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".log")) == [
        "Modelfile", "Modelfile.q8_0", "export.json", "model-f16.gguf", "model-q8_0.gguf", "verify.json"]
    assert not list(tmp_path.glob(".gguf*"))  # no staging left behind
    v = json.loads((out / "verify.json").read_text())
    f16, q8 = v["files"]["model-f16.gguf"], v["files"]["model-q8_0.gguf"]
    assert v["passed"] and f16["passed"] and q8["passed"]
    assert f16["greedy_equal"] and f16["greedy_llama_cpp"] == f16["greedy_transformers"]
    assert all(f16["prompt_ids_equal"]) and all(f16["gguf_template_renders_equal"])
    assert all(f16["stop_ids_end_generation"].values()) and len(f16["stop_ids_end_generation"]) == 3
    assert not f16["llama_cpp_adds_bos"]
    assert f16["max_abs_diff"] <= f16["tolerance"] and q8["max_abs_diff"] <= q8["tolerance"]
    assert q8["max_abs_diff"] > f16["max_abs_diff"]  # the figures measure something
    assert q8["tensor_types"].get("Q8_0", 0) > 0 and q8["bytes"] < f16["bytes"]
    assert "FROM ./model-f16.gguf" in (out / "Modelfile").read_text()


@pytest.mark.slow
def test_merged_folder_to_q4_k_m_via_cli(tmp_path):
    pytest.importorskip("llama_cpp")
    merged = _bigger_tiny(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "glmtune", "export", "--merged", str(merged), "--format", "gguf",
                           "--quant", "q4_k_m,q8_0", "--out", str(out), "--system", "You are helpful."],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    v = json.loads((out / "verify.json").read_text())
    q4 = v["files"]["model-q4_k_m.gguf"]
    assert q4["passed"] and q4["tensor_types"].get("Q4_K", 0) > 0  # real k-quant blocks at rows of 256
    assert q4["max_abs_diff"] > v["files"]["model-q8_0.gguf"]["max_abs_diff"]
    assert 'SYSTEM """You are helpful."""' in (out / "Modelfile").read_text()
    assert "model-q4_k_m.gguf" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_failed_gguf_verification_leaves_nothing(lora_run, tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    from glmtune.export import gguf_verify
    from glmtune.export.gguf import export_gguf

    monkeypatch.setitem(gguf_verify.TOLERANCE, "f16", (1e-9, 1.0, True))
    out = tmp_path / "gguf"
    with pytest.raises(ExportError, match="GGUF verification failed"):
        export_gguf(lora_run, "f16", out_dir=out, modelfile=False, log=lambda *_: None)
    assert not out.exists() and not list(tmp_path.glob(".gguf*"))
    failed = json.loads((tmp_path / "gguf.verify-failed.json").read_text())
    assert not failed["passed"] and "max |Δlogit|" in failed["files"]["model-f16.gguf"]["failures"][0]


def test_size_estimates_from_the_planner_facts():
    from glmtune.export.gguf import size_estimates
    from glmtune.plan.facts import builtin_facts

    sizes = size_estimates("glm-4-9b-chat-hf")
    n = builtin_facts("glm-4-9b-chat-hf").param_count()
    assert sizes["f16"] == pytest.approx(2 * n, rel=1e-3) and sizes["q8_0"] == pytest.approx(n * 8.5008 / 8, rel=1e-6)
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q6_k"] > sizes["q5_k_m"] > sizes["q4_k_m"]
    with pytest.raises(ExportError, match="planner"):
        size_estimates("no-such-model")


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["bnb4", "bnb8"])
def test_bnb_export_loads_quantized_with_plain_transformers(lora_run, tmp_path, quant):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / quant
    proc = subprocess.run([sys.executable, "-m", "glmtune", "export", "--run", str(lora_run), "--quant", quant,
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    v = json.loads((out / "verify.json").read_text())
    assert v["passed"] and v["loaded_quantized"] and v["bytes"] < v["full_precision_bytes"]
    assert 0 < v["max_abs_diff"] <= v["tolerance"]
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "bitsandbytes"
    m = AutoModelForCausalLM.from_pretrained(str(out), device_map="cpu")
    assert getattr(m, f"is_loaded_in_{quant[-1]}bit")
    assert not (out / ".hf").exists() and torch.isfinite(m.lm_head.weight).all()


@pytest.mark.slow
def test_llama_cpp_check_catches_a_stop_id_the_gguf_lacks(tmp_path):
    """Without glmtune's eom entry (the converter alone), llama.cpp would not stop at <|observation|>."""
    pytest.importorskip("llama_cpp")
    from glmtune.export.gguf_verify import verify_gguf
    from glmtune.models.tiny import ensure_tiny

    src = ensure_tiny("glm4")
    tok = _tok("glm4")
    stops = [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    plain = tmp_path / "plain.gguf"
    convert(src, plain, "f32", stops[:2], log=lambda *_: None)  # what convert_hf_to_gguf writes by itself
    assert "tokenizer.ggml.eom_token_id" not in _meta(plain)
    v = verify_gguf(src, plain, "f32", stops)
    assert not v["passed"] and v["stop_ids_end_generation"] == {stops[0]: True, stops[1]: True, stops[2]: False}
    assert any("would not stop" in f for f in v["failures"])
    fixed = tmp_path / "fixed.gguf"
    convert(src, fixed, "f32", stops, log=lambda *_: None)
    v = verify_gguf(src, fixed, "f32", stops)
    assert v["passed"] and all(v["stop_ids_end_generation"].values()) and v["greedy_equal"]
