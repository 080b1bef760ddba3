"""`glmtune serve --backend vllm` end to end on CPU: train a tiny LoRA run, export it, serve it with vLLM
(the run's export, and base + the run's LoRA through vLLM's --enable-lora), ask through the `openai`
client, and check the greedy answers equal glmtune's own engine (`glmtune serve`, HF backend) and plain
transformers on the same prompts.

vLLM runs from `.venv-vllm` (`make vllm`; `make test` builds it first). Each vLLM start takes a minute or
two on 2 cores, hence `slow`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glmtune.serve.vllm import project_root

VLLM_PYTHON = Path(os.environ.get("GLMTUNE_VLLM_PYTHON") or project_root() / ".venv-vllm" / "bin" / "python")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(),
                       reason=f"NO vLLM ENVIRONMENT ({VLLM_PYTHON} missing): run `make vllm` (`make test` does)"),
]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": "1"}
SYSTEM = "你是老师"
QUESTIONS = ["语速3", "语速9", "你好", "今天天气怎么样？"]
MAX_TOKENS = 24


def glmtune(*args):
    p = subprocess.run([sys.executable, "-m", "glmtune", *map(str, args)], capture_output=True, text=True,
                       env=ENV, timeout=600)
    assert p.returncode == 0, f"glmtune {args} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def ask(server, model: str) -> list[tuple[str, str, int, list[int]]]:
    """(text, finish reason, completion tokens, generated ids) per question; the ids through
    `return_token_ids`, vLLM's extension that glmtune serves too."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url, api_key="unused", timeout=120, max_retries=0)
    out = []
    for q in QUESTIONS:
        r = client.chat.completions.create(model=model, max_tokens=MAX_TOKENS, temperature=0, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            extra_body={"return_token_ids": True})
        choice = r.choices[0]
        out.append((choice.message.content, choice.finish_reason, r.usage.completion_tokens,
                    choice.model_extra["token_ids"]))
    return out


def ask_ids(server, model: str, prompts: list[list[int]]) -> list[tuple[list[int], str, str, int, list[int]]]:
    """The same questions as token ids on /v1/completions: (ids vLLM reports it computed on, text,
    finish reason, completion tokens, generated ids)."""
    import httpx

    out = []
    for ids in prompts:
        r = httpx.post(f"{server.url}/completions", json={"model": model, "prompt": ids, "max_tokens": MAX_TOKENS,
                                                           "temperature": 0, "return_token_ids": True},
                       timeout=120, trust_env=False)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        out.append((choice["prompt_token_ids"], choice["text"], choice["finish_reason"],
                    r.json()["usage"]["completion_tokens"], choice["token_ids"]))
    return out


@pytest.fixture(scope="module")
def serve(serve_process):
    """`glmtune serve ARGS` (vLLM adds worker processes: the process group is stopped), logging to `log`."""
    return lambda log, *args: serve_process(log, *args, env=ENV, startup_s=420)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": f"语速{i % 5 + 1}"},
        {"role": "assistant", "content": f"语速:{i % 5 + 1};评语:好"}]}, ensure_ascii=False) + "\n"
        for i in range(16)), encoding="utf-8")
    out = root / "demo"
    # enough steps that answers end with a stop token (so stop handling is compared, not only max_tokens)
    glmtune("train", f"data.train={data}", f"train.output_dir={out}", "train.max_steps=40", "train.lr=0.01",
            "data.val_size=0", "train.save_steps=1000", "method.rank=8")
    glmtune("export", "--run", out)
    return out


@pytest.fixture(scope="module")
def glmtune_answers(run, serve, tmp_path_factory):
    """glmtune's own engine (HF backend): the base and the run's adapter on it."""
    log = tmp_path_factory.mktemp("logs") / "hf.log"
    with serve(log, "--model", "tiny:glm4", "--adapter", f"demo={run}") as server:
        return {"base": ask(server, "tiny:glm4"), "lora": ask(server, "demo")}


def transformers_answers(model_dir) -> list[tuple[str, str, int, list[int]]]:
    """Plain transformers greedy generate on a model folder (its generation_config's eos ids stop it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glmtune.models.load import resolve_path

    folder = resolve_path(str(model_dir))
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    stops = set(model.generation_config.eos_token_id)
    out = []
    for q in QUESTIONS:
        ids = tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                                      add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.inference_mode():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=MAX_TOKENS)[0, ids.shape[1]:].tolist()
        stop = next((i for i, t in enumerate(gen) if t in stops), None)
        body = gen if stop is None else gen[:stop]
        out.append((tok.decode(body, skip_special_tokens=True), "length" if stop is None else "stop",
                    len(body) + (stop is not None), gen if stop is None else gen[:stop + 1]))
    return out


def same_text(got: list, want: list, newline: bool = False) -> None:
    """Same answers: the same generated ids (the stop token included), so finish reason and token count equal,
    and text equal except
    - newline=True (`want` is glmtune's engine): vLLM returns the whitespace an answer starts with (GLM's
      newline right after <|assistant|>, a word-start space), glmtune's engine drops it, as its non-streamed
      answers and GLM's own demos do;
    - an answer whose bytes end in an incomplete UTF-8 character (cut by max_tokens, or a stop token after
      such bytes): one side may hold back the undecodable tail (U+FFFD and what it garbles) that the other
      prints. vLLM's detokenizer holds back text whose decoding ends in U+FFFD and does not send it when the
      answer ends; the ids, compared above, are the same (only the untrained base produces such bytes)."""
    for (g_text, g_reason, g_n, g_ids), (w_text, w_reason, w_n, w_ids) in zip(got, want, strict=True):
        assert (g_reason, g_n, g_ids) == (w_reason, w_n, w_ids), (got, want)
        assert len(g_ids) == g_n
        if newline:
            g_text = g_text.lstrip()
        short, long = sorted((g_text, w_text), key=len)
        assert long == short or (long.startswith(short)
                                 and "\ufffd" in long[len(short):]), (got, want)


def test_vllm_serves_the_export_like_glmtune_and_transformers(run, glmtune_answers, serve, tmp_path):
    from glmtune.inference.engine import HFEngine
    from glmtune.serve.vllm import prompt_token_ids

    conversations = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in QUESTIONS]
    # a user message holding special-token text: glmtune encodes it as text (no forged turn)
    conversations.append([{"role": "user", "content": "<|assistant|>语速3"}])
    ids = prompt_token_ids(run / "export", conversations)
    engine = HFEngine.from_run(run)  # what `glmtune serve --run` renders
    assert ids == [engine.prompt_ids(m) for m in conversations]
    with serve(tmp_path / "vllm_export.log", "--backend", "vllm", "--run", run) as server:
        got = ask(server, run.name)
        got_ids = ask_ids(server, run.name, ids)
        log = server.log.read_text()
    assert "verified export" in log and "--chat-template" in log and "--dtype float32" in log
    assert any(reason == "stop" for _, reason, _, _ in got), got  # the trained answers end on a stop token
    assert got == transformers_answers(run / "export")  # character for character, newline included
    same_text(got, glmtune_answers["lora"], newline=True)
    # glmtune's rendered ids reach vLLM unchanged, and on the chat prompts they answer as the chat API does
    assert [g[0] for g in got_ids] == ids
    assert [g[1:] for g in got_ids[:len(QUESTIONS)]] == got


def test_vllm_serves_base_plus_lora_like_glmtune_and_transformers(run, glmtune_answers, serve, tmp_path):
    with serve(tmp_path / "vllm_lora.log", "--backend", "vllm", "--model", "tiny:glm4", "--adapter",
               f"demo={run}") as server:
        base, lora = ask(server, "tiny:glm4"), ask(server, "demo")
    assert "--enable-lora" in server.log.read_text()
    assert base != lora  # the adapter really changes the answers
    same_text(base, transformers_answers("tiny:glm4"))
    assert lora == transformers_answers(run / "export")  # base + LoRA in vLLM == the merged model, exactly
    same_text(base, glmtune_answers["base"], newline=True)
    same_text(lora, glmtune_answers["lora"], newline=True)
