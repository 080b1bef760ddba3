"""`return_token_ids` (vLLM's extension of the chat API): the ids a request was computed on and the ids it
generated, stop token included, as vLLM returns them, so two engines can be compared token for token where
their texts legitimately differ (an answer that ends inside a multi-byte character). Usage counts exactly
those generated ids: a stop string ends an answer on a token that was generated, not on an extra one."""

import copy

import httpx
import pytest

MSG = [{"role": "user", "content": "你好，今天天气怎么样？"}]


def greedy_ids(engine, messages, n: int) -> list[int]:
    """Plain transformers greedy decoding of the base model (the served model holds adapters), no stop token:
    the reference ids."""
    import contextlib

    import torch

    ids = engine.prompt_ids(messages)
    base = getattr(engine.model, "disable_adapter", contextlib.nullcontext)
    with torch.inference_mode(), base():
        out = engine.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                                    pad_token_id=engine.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def ask(url, stream=False, **body):
    body = {"model": "tiny", "messages": MSG, "temperature": 0, "return_token_ids": True, **body}
    if not stream:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()
    chunks = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                import json

                chunks.append(json.loads(line[6:]))
    return chunks


def streamed_ids(chunks, index: int = 0) -> tuple[list[int], str, str]:
    """Choice `index`'s ids, text and finish reason, put together from the chunks."""
    ids, text, reason = [], "", None
    for ch in chunks:
        for c in ch["choices"]:
            if c["index"] != index:
                continue
            ids += c.get("token_ids") or []
            text += (c.get("delta") or {}).get("content") or ""
            reason = c["finish_reason"] or reason
    return ids, text, reason


@pytest.fixture
def url_stopping_at(served, tiny_glm4):
    """An app whose engine stops on `token` (as on GLM's <|user|>): the random tiny model never emits a real
    stop token, so one of its greedy tokens plays that part."""
    from glmtune.inference.batching import BatchingEngine
    from glmtune.serve.api import create_app, serve_in_thread
    from glmtune.serve.config import ServeSection

    servers = []

    def start(token: int):
        engine = copy.copy(served.engine)
        engine.stop_ids = [token]
        cfg = ServeSection(max_prompt_tokens=256, max_new_tokens=64)
        server, url = serve_in_thread(create_app(served, cfg, batcher=BatchingEngine(engine, 4, 8)))
        servers.append(server)
        return url

    yield start
    for s in servers:
        s.should_exit = True
        s.thread.join(timeout=10)


def test_token_ids_are_the_greedy_ids_plain_and_streamed(start_app, served):
    url, _ = start_app()
    want = greedy_ids(served.engine, MSG, 12)
    plain = ask(url, max_tokens=12)
    assert plain["prompt_token_ids"] == served.engine.prompt_ids(MSG)
    choice = plain["choices"][0]
    assert choice["finish_reason"] == "length" and choice["token_ids"] == want
    assert plain["usage"]["completion_tokens"] == len(want)
    chunks = ask(url, stream=True, max_tokens=12)
    assert chunks[0]["prompt_token_ids"] == served.engine.prompt_ids(MSG)
    assert streamed_ids(chunks) == (want, choice["message"]["content"], "length")
    assert chunks[-1]["usage"]["completion_tokens"] == len(want)
    # without the flag, nothing is added (OpenAI's shape)
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MSG, "max_tokens": 3}, timeout=60).json()
    assert "prompt_token_ids" not in r and "token_ids" not in r["choices"][0]


def test_the_stop_token_is_returned_and_counted(url_stopping_at, served):
    want = greedy_ids(served.engine, MSG, 12)
    stop = want[4]
    k = want.index(stop)  # the first time the model produces it
    url = url_stopping_at(stop)
    plain = ask(url, max_tokens=12)
    choice = plain["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["token_ids"] == want[:k + 1]  # vLLM includes it too
    assert plain["usage"]["completion_tokens"] == k + 1
    assert streamed_ids(ask(url, stream=True, max_tokens=12))[::2] == (want[:k + 1], "stop")


def test_a_stop_string_counts_only_the_generated_tokens(start_app, served):
    url, _ = start_app()
    full = ask(url, max_tokens=12)["choices"][0]
    text = full["message"]["content"]
    stop = text[len(text) // 2:len(text) // 2 + 1]
    plain = ask(url, max_tokens=12, stop=[stop])
    choice = plain["choices"][0]
    assert choice["finish_reason"] == "stop" and not choice["message"]["content"].count(stop)
    ids = choice["token_ids"]
    assert ids == full["token_ids"][:len(ids)] and len(ids) < 12  # the tokens up to the one completing the stop
    assert served.engine.tokenizer.decode(ids).find(stop) >= 0
    assert plain["usage"]["completion_tokens"] == len(ids)  # no stop token was generated: none is counted
    chunks = ask(url, stream=True, max_tokens=12, stop=[stop])
    assert streamed_ids(chunks)[0] == ids and chunks[-1]["usage"]["completion_tokens"] == len(ids)


def test_the_engine_process_returns_the_same_ids(start_app, tiny_glm4, adapters):
    from glmtune.serve.api import create_app, serve_in_thread
    from glmtune.serve.config import ServeSection
    from glmtune.serve.engine_process import EngineProcess

    url, _ = start_app()
    cfg = ServeSection(max_prompt_tokens=256, max_new_tokens=64)
    batcher = EngineProcess(dict(model=str(tiny_glm4), adapters=adapters, name="tiny"), cfg, threads=1)
    server, url_proc = serve_in_thread(create_app(batcher.served_models(), cfg, batcher=batcher))
    try:
        for stream in (False, True):
            got, want = ask(url_proc, stream, max_tokens=10, n=2), ask(url, stream, max_tokens=10, n=2)
            assert got if stream else got["choices"]
            if stream:
                assert [streamed_ids(got, i) for i in (0, 1)] == [streamed_ids(want, i) for i in (0, 1)]
            else:
                assert [c["token_ids"] for c in got["choices"]] == [c["token_ids"] for c in want["choices"]]
                assert got["usage"] == want["usage"] and got["prompt_token_ids"] == want["prompt_token_ids"]
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)
        batcher.close()


def test_return_token_ids_must_be_a_boolean(start_app):
    url, _ = start_app()
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MSG, "return_token_ids": "yes"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "return_token_ids"
