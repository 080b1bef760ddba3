"""`glmtune serve` on the GGUF base answers exactly what plain transformers greedy decoding answers."""

import pytest

pytestmark = [pytest.mark.real, pytest.mark.slow]

PROMPTS = ["What is the capital of France?", "What is the plural of mouse?", "How many days are in a week?"]
MAX_NEW = 24


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


def test_serve_equals_transformers_greedy(smollm2_gguf, smollm2_dir, serve_process, tmp_path):
    import openai

    with serve_process(tmp_path / "serve.log", "--model", smollm2_gguf, stop_s=60, wait=False) as server:
        expected = transformers_greedy(smollm2_dir, PROMPTS)  # while the server loads
        server.wait_ready()
        client = openai.OpenAI(base_url=server.url, api_key="none")
        name = client.models.list().data[0].id
        got = []
        for p in PROMPTS:  # one at a time: batch size 1, like the reference
            r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": p}],
                                               temperature=0, max_tokens=MAX_NEW)
            got.append(r.choices[0].message.content)
        assert got == expected
        assert "Paris" in got[0] and "mice" in got[1]  # real weights answer, not noise
    assert "dequantized" in (tmp_path / "serve.log").read_text() or "GGUF base" in (tmp_path / "serve.log").read_text()
