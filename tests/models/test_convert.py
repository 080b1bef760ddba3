"""ChatGLM2/3 and glm-4-9b-chat remote-code checkpoints -> native Glm, checked against the original code.

The fixtures in tests/assets/chatglm_equiv/ were written by tests/fixtures/make_chatglm_logits.py, which ran the
ORIGINAL modeling_chatglm.py (tests/assets/real/<model>/) under transformers 4.40.2 on tiny random weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EQUIV = ROOT / "tests" / "assets" / "chatglm_equiv"
REAL = ROOT / "tests" / "assets" / "real"
ALL_VARIANTS = sorted(p.name for p in EQUIV.iterdir())
# the -ptuning variants' references include the official prefix: tests/methods/test_ptuning_chatglm.py
VARIANTS = [v for v in ALL_VARIANTS if "ptuning" not in json.loads((EQUIV / v / "reference.json").read_text())]


def src_folder(variant: str, dest: Path) -> Path:
    """The fixture checkpoint + the real tokenizer files of its model, as a user's download would hold them."""
    real = json.loads((EQUIV / variant / "reference.json").read_text())["modeling_code"].split("/")[3]
    dest.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(EQUIV / variant / f, dest / f)
    for f in ("tokenizer.model", "tokenizer_config.json", "tokenization_chatglm.py", "configuration_chatglm.py",
              "modeling_chatglm.py"):
        shutil.copy2(REAL / real / f, dest / f)
    return dest


def test_variants_present():
    assert set(VARIANTS) >= {"chatglm3-6b", "glm-4-9b-chat", "glm-4-9b-chat-rope50", "chatglm3-6b-mha",
                             "glm-4-9b-chat-original-rope-false"}
    assert set(ALL_VARIANTS) - set(VARIANTS) == {"chatglm3-6b-ptuning", "chatglm3-6b-ptuning-projection"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_native_logits_equal_original_code(variant, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glmtune.models.convert import convert

    ref = json.loads((EQUIV / variant / "reference.json").read_text())
    ref_logits = load_file(str(EQUIV / variant / "reference_logits.safetensors"))["logits"]
    src = src_folder(variant, tmp_path / "src")
    res = convert(src, tmp_path / "dst")
    assert res.dropped == ["transformer.rotary_pos_emb.inv_freq"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dst", dtype=torch.float32).eval()
    assert type(model).__name__ == "GlmForCausalLM"
    cfg = json.loads((src / "config.json").read_text())
    assert model.config.rope_parameters["rope_theta"] == 10000.0 * cfg.get("rope_ratio", 1)
    mqa = cfg.get("multi_query_attention", False)
    assert model.config.num_key_value_heads == (cfg["multi_query_group_num"] if mqa else cfg["num_attention_heads"])
    ids = torch.tensor([ref["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    delta = (logits - ref_logits).abs().max().item()
    print(f"{variant}: max |dlogit| = {delta:.3g}")
    assert delta < 1e-5, delta
    seq = ids
    with torch.no_grad():  # greedy, as the reference made it: argmax of the whole sequence's last logits
        for _ in ref["greedy_ids"]:
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert seq[0, ids.shape[1]:].tolist() == ref["greedy_ids"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "dst")  # the native tokenizer, chat template included
    assert tok.chat_template and tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_rope_ratio_matters():
    """The rope50 fixture is a real test of rope_ratio: its reference differs from the rope500 one."""
    from safetensors.torch import load_file

    a = load_file(str(EQUIV / "glm-4-9b-chat" / "reference_logits.safetensors"))["logits"]
    b = load_file(str(EQUIV / "glm-4-9b-chat-rope50" / "reference_logits.safetensors"))["logits"]
    assert (a - b).abs().max().item() > 1e-3


def test_unknown_tensor_is_an_error():
    import torch

    from glmtune.models.convert import ConvertError, map_tensor

    with pytest.raises(ConvertError, match="transformer.prefix_encoder.embedding.weight"):
        map_tensor("transformer.prefix_encoder.embedding.weight", torch.zeros(2, 2), 4, 2)
    with pytest.raises(ConvertError, match="rows"):
        map_tensor("transformer.encoder.layers.0.self_attention.query_key_value.weight", torch.zeros(9, 2), 4, 2)


def test_chatglm6b_takes_its_own_route(tmp_path):
    from glmtune.models.convert import why_not_convertible

    assert why_not_convertible(REAL / "chatglm-6b") is None  # glmtune's native ChatGLM-6B (test_chatglm6b.py)
    assert why_not_convertible(REAL / "chatglm3-6b") is None
    qe = tmp_path / "qe"
    qe.mkdir()
    cfg = json.loads((REAL / "chatglm-6b" / "config.json").read_text())
    (qe / "config.json").write_text(json.dumps({**cfg, "quantization_bit": 4, "quantization_embeddings": True}))
    assert "quantization_embeddings" in why_not_convertible(qe)


def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT), "GLMTUNE_CACHE": str(tmp_path / "cache")}


def test_cli_convert(tmp_path):
    src = src_folder("chatglm3-6b", tmp_path / "src")
    r = subprocess.run([sys.executable, "-m", "glmtune", "convert", str(src), str(tmp_path / "out")],
                       capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "to native Glm" in r.stderr
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "glm" and cfg["architectures"] == ["GlmForCausalLM"]
    assert (tmp_path / "out" / "glmtune_converted.json").exists()
    bad = subprocess.run([sys.executable, "-m", "glmtune", "convert", str(REAL / "chatglm-6b"), str(tmp_path / "x")],
                         capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no *.safetensors" in bad.stderr


def test_loader_converts_on_the_fly(tmp_path, monkeypatch, capsys):
    import torch

    from glmtune.models.load import load

    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path / "cache"))
    src = src_folder("glm-4-9b-chat", tmp_path / "src")

    class M:  # the fields of ModelSection that load() reads
        path = str(src)
        trust_remote_code = True
        chat_template = None
        dtype = "float32"
        attn_implementation = "eager"

    loaded = load(M())
    err = capsys.readouterr().err
    assert "converted" in err and "native Glm" in err
    assert type(loaded.model).__name__ == "GlmForCausalLM" and loaded.family.name == "glm"
    ref = json.loads((EQUIV / "glm-4-9b-chat" / "reference.json").read_text())
    from safetensors.torch import load_file

    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ref["input_ids"]])).logits[0]
    ref_logits = load_file(str(EQUIV / "glm-4-9b-chat" / "reference_logits.safetensors"))["logits"]
    assert (logits - ref_logits).abs().max().item() < 1e-5
    load(M())  # second time: from the cache, said so
    assert "from the converted copy" in capsys.readouterr().err


def test_missing_tokenizer_is_an_error(tmp_path):
    from glmtune.models.convert import ConvertError, convert

    src = tmp_path / "src"
    src.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(EQUIV / "chatglm3-6b" / f, src / f)
    with pytest.raises(ConvertError, match="tokenizer_config.json"):
        convert(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_streamed_into_small_shards(tmp_path):
    """Tensors are written shard by shard: never more than one output shard held in memory."""
    import torch
    from transformers import AutoModelForCausalLM

    from glmtune.models.convert import convert

    src = src_folder("chatglm3-6b", tmp_path / "src")
    res = convert(src, tmp_path / "dst", max_shard="120KB")
    shards = sorted((tmp_path / "dst").glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3
    assert 0 < res.max_buffered_bytes <= 120_000
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dst", dtype=torch.float32)
    assert type(model).__name__ == "GlmForCausalLM"
