"""`glmtune serve` on the GGUF base answers exactly what plain transformers greedy decoding answers."""

import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.real, pytest.mark.slow]

PROMPTS = ["What is the capital of France?", "What is the plural of mouse?", "How many days are in a week?"]
MAX_NEW = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transformers_greedy(folder, prompts):
    """The reference: the dequantized folder through AutoModelForCausalLM.generate, one prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for p in prompts:
        enc = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False)
        out.append(tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def test_serve_equals_transformers_greedy(smollm2_gguf, smollm2_dir, tmp_path):
    import httpx
    import openai

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "glmtune", "serve", "--model", str(smollm2_gguf),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        expected = transformers_greedy(smollm2_dir, PROMPTS)  # while the server loads
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not come up"
            time.sleep(1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        name = client.models.list().data[0].id
        got = []
        for p in PROMPTS:  # one at a time: batch size 1, like the reference
            r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": p}],
                                               temperature=0, max_tokens=MAX_NEW)
            got.append(r.choices[0].message.content)
        assert got == expected
        assert "Paris" in got[0] and "mice" in got[1]  # real weights answer, not noise
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    assert "dequantized" in (tmp_path / "serve.log").read_text() or "GGUF base" in (tmp_path / "serve.log").read_text()
