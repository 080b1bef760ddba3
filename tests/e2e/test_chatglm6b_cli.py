"""ChatGLM-6B and ChatGLM-6B-INT4 folders (original remote-code layout, the real tokenizer, config and special ids,
tiny random weights) through the real CLI: the loader converts them to glmtune's native ChatGLM-6B class (INT4
dequantized) and says so; then train (LoRA, P-Tuning v2 with pre_seq_len/prefix_projection; QLoRA on INT4), predict,
chat --prompt, export (LoRA) and serve, answering through the `openai` client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "assets"
REAL_FILES = ("ice_text.model", "tokenizer_config.json", "tokenization_chatglm.py", "configuration_chatglm.py",
              "modeling_chatglm.py", "quantization.py", "LICENSE", "MODEL_LICENSE")
PROMPT = "语速3"


def chatglm6b_folder(dest: Path, variant: str = "chatglm-6b") -> Path:
    """The equivalence fixture `variant` (fp layout, or INT4 packed weight + weight_scale) with the real config's
    vocabulary (130528) and special ids ([gMASK] 130001, <sop> 130004, <eop> 130005); the tied embedding is
    re-drawn at the real vocabulary size."""
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True)
    cfg = json.loads((ASSETS / "chatglm6b_equiv" / variant / "config.json").read_text())
    real = json.loads((ASSETS / "real" / "chatglm-6b" / "config.json").read_text())
    for k in ("vocab_size", "bos_token_id", "eos_token_id", "mask_token_id", "gmask_token_id", "pad_token_id"):
        cfg[k] = real[k]
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    emb = 0.08 * torch.randn(cfg["vocab_size"], cfg["hidden_size"], generator=torch.Generator().manual_seed(0))
    state = {}
    for name, t in load_file(str(ASSETS / "chatglm6b_equiv" / variant / "model.safetensors")).items():
        if name in ("transformer.word_embeddings.weight", "lm_head.weight"):
            t = emb.clone()
        state[name] = t.contiguous()
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    for f in REAL_FILES:
        shutil.copy2(ASSETS / "real" / "chatglm-6b" / f, dest / f)
    return dest


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("chatglm6b")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"语速{i}"},
                                                     {"role": "assistant", "content": f"语速:{i};评语:好"}]},
                                       ensure_ascii=False) + "\n" for i in range(4)), "utf-8")
    return {"root": root, "data": data,
            "env": {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                    "GLMTUNE_CACHE": str(root / "cache")}}


def glmtune(env, *args):
    p = subprocess.run([sys.executable, "-m", "glmtune", *map(str, args)], capture_output=True, text=True,
                       env=env["env"], timeout=600)
    assert p.returncode == 0, f"glmtune {args} exited {p.returncode}\n{p.stdout}\n{p.stderr[-4000:]}"
    assert "Traceback" not in p.stderr
    return p


def train(env, folder, run, *extra):
    return glmtune(env, "train", f"model.path={folder}", f"data.train={env['data']}", f"train.output_dir={run}",
                   "data.val_size=0", "data.test_size=0", "train.max_steps=2", "train.batch_size=2", *extra)


@pytest.fixture
def serve_and_ask(env, serve_process):
    def serve_and_ask(log: Path, *args) -> tuple[str, int]:
        """`glmtune serve ARGS`, one greedy chat completion through the openai client, then stop the server."""
        from openai import OpenAI

        with serve_process(log, *args, env=env["env"], startup_s=300) as server:
            client = OpenAI(base_url=server.url, api_key="unused", timeout=120, max_retries=0)
            model = client.models.list().data[0].id
            r = client.chat.completions.create(model=model, max_tokens=4, temperature=0,
                                               messages=[{"role": "user", "content": PROMPT}])
            return r.choices[0].message.content, r.usage.completion_tokens

    return serve_and_ask


def predicted(env, run, name) -> list[dict]:
    test = env["root"] / "test.jsonl"
    test.write_text(json.dumps({"messages": [{"role": "user", "content": PROMPT},
                                             {"role": "assistant", "content": "x"}]}, ensure_ascii=False) + "\n")
    out = env["root"] / f"{name}.jsonl"
    glmtune(env, "predict", "--run", run, "--test", test, "--out", out, "--max-new-tokens", "4")
    return [json.loads(line) for line in out.read_text("utf-8").splitlines()]


@pytest.mark.slow
def test_chatglm6b_lora_train_predict_chat_export_serve(env, serve_and_ask):
    folder = chatglm6b_folder(env["root"] / "chatglm-6b-tiny")
    run = env["root"] / "run_lora"
    p = train(env, folder, run, "method.name=lora")
    assert "to glmtune's native ChatGLM-6B class" in p.stderr  # the route taken is said
    adapter = json.loads(next(run.rglob("adapter_config.json")).read_text())
    assert set(adapter["target_modules"]) == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    preds = predicted(env, run, "lora")
    assert len(preds) == 1 and preds[0]["completion_tokens"] > 0 and isinstance(preds[0]["prediction"], str)
    p = glmtune(env, "chat", "--run", run, "--prompt", PROMPT, "--max-new-tokens", "4")
    assert p.stdout.strip()
    answer, n = serve_and_ask(env["root"] / "serve_lora.log", "--run", run)
    assert n > 0 and answer == preds[0]["prediction"]  # same greedy answer through the API as predict's
    glmtune(env, "export", "--run", run, "--out", env["root"] / "export")
    out_cfg = json.loads((env["root"] / "export" / "config.json").read_text())
    assert out_cfg["model_type"] == "glmtune_chatglm6b" and out_cfg["vocab_size"] == 130528
    assert json.loads((env["root"] / "export" / "verify.json").read_text())["passed"] is True
    answer2, _ = serve_and_ask(env["root"] / "serve_export.log", "--model", env["root"] / "export")
    assert answer2 == answer  # the merged export answers as base + adapter


@pytest.mark.slow
def test_chatglm6b_int4_ptuning_lora_qlora(env, serve_and_ask):
    folder = chatglm6b_folder(env["root"] / "chatglm-6b-int4-tiny", "chatglm-6b-int4")
    run = env["root"] / "run_pt"
    # seed 003's settings, scaled down: P-Tuning v2 on the INT4 checkpoint with prefix_projection
    p = train(env, folder, run, "method.name=ptuning", "method.pre_seq_len=8", "method.prefix_projection=true")
    assert "8 INT4 layers dequantized" in p.stderr
    meta = json.loads(next(run.rglob("ptuning.json")).read_text())
    assert meta == {"mechanism": "pre_seq_len", "pre_seq_len": 8, "prefix_projection": True}
    preds = predicted(env, run, "pt")
    assert preds[0]["completion_tokens"] > 0
    p = glmtune(env, "chat", "--run", run, "--prompt", PROMPT, "--max-new-tokens", "4")
    assert p.stdout.strip()
    answer, n = serve_and_ask(env["root"] / "serve_pt.log", "--run", run)
    assert n > 0 and answer == preds[0]["prediction"]
    p = train(env, folder, env["root"] / "run_int4_lora", "method.name=lora")
    assert "INT4" in p.stderr and "ChatGLM6BForCausalLM" in p.stderr  # the cached conversion is reused and named
    # QLoRA: the dequantized base re-quantized to NF4 by bitsandbytes (the ~4-bit route in memory)
    p = train(env, folder, env["root"] / "run_int4_qlora", "method.name=qlora")
    assert "method qlora:" in p.stdout + p.stderr
    assert next((env["root"] / "run_int4_qlora").rglob("adapter_config.json")).exists()
