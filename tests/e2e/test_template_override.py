"""One chat template from training to serving: a run trained with `model.chat_template=...` answers through `chat`
and `serve`, and its export (read by plain transformers) renders the same prompt ids as the run."""

import json

import pytest

from test_cli_spine import glmtune, rows, write

# The tiny GLM-4 template with a different turn layout ("<|role|>\n" -> "<|role|> " + content + "\n"), so the
# override is visible in the ids; prefix-stable like GLM-4's own.
OVERRIDE = ("[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.mark.slow
def test_run_with_template_override_chats_and_exports_the_same_prompt_ids(tmp_path):
    from transformers import AutoTokenizer

    from glmtune.inference.engine import HFEngine

    train = write(tmp_path / "train.jsonl", rows(8))
    run = tmp_path / "run"
    glmtune("train", f"data.train={train}", f"train.output_dir={run}", "data.val_size=0", "train.max_steps=2",
            "train.batch_size=4", f"model.chat_template={OVERRIDE}")
    # `data render` with the run's config shows the override (the same function training used).
    p = glmtune("data", "render", train, run / "config.yaml", "--json", "--limit", "1")
    rendered = json.loads(p.stdout.splitlines()[0])
    assert rendered["line"] == 1
    # chat answers through the run (no TemplateMismatch, no "no chat_template").
    p = glmtune("chat", "--run", run, "--prompt", "语速3", "--max-new-tokens", "4")
    assert p.returncode == 0 and "Traceback" not in p.stderr
    # the run's engine renders with the override
    engine = HFEngine.from_run(run)
    msgs = rows(1)[0]["messages"][:2]  # the first training sample's prompt
    run_ids = engine.prompt_ids(msgs)
    assert engine.tokenizer.decode(run_ids).startswith("[gMASK]<sop><|system|> 你是老师\n<|user|> 语速1\n")
    assert rendered["input_ids"][:len(run_ids)] == run_ids  # training rendered the same prompt
    # serve: the OpenAI API counts the same prompt tokens (it renders with the run's template too)
    import httpx

    from glmtune.serve.api import create_app, serve_in_thread
    from glmtune.serve.config import ServeSection
    from glmtune.serve.loading import load_served

    server, url = serve_in_thread(create_app(load_served(run=str(run)), ServeSection(max_new_tokens=4)))
    try:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                       json={"model": "run", "messages": msgs, "max_tokens": 4, "temperature": 0})
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(run_ids)
    # export: plain transformers reads the override from the merged folder and renders identical prompt ids
    out = tmp_path / "export"
    glmtune("export", "--run", run, "--out", out)
    verify = json.loads((out / "verify.json").read_text())
    assert verify["passed"] and verify["prompt_ids_equal"]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == OVERRIDE
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == OVERRIDE  # older readers
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    assert list(ids if isinstance(ids, list) else ids["input_ids"]) == run_ids
