"""The HTTP API through the official `openai` client on 127.0.0.1."""

import threading

import httpx
import openai
import pytest

MSG = [{"role": "user", "content": "你好，今天天气怎么样？"}]


def client(url, key="none"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_plain_and_streaming_agree(start_app):
    url, _ = start_app()
    c = client(url)
    r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0)
    text = r.choices[0].message.content
    assert text and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 1 <= r.usage.completion_tokens <= 12
    stream = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices]
    assert "".join(pieces) == text and len([p for p in pieces if p]) > 1  # really streamed, same answer
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # The raw stream ends with the SSE terminator.
    raw = httpx.post(f"{url}/v1/chat/completions", json={"messages": MSG, "max_tokens": 3, "stream": True}).text
    assert raw.rstrip().endswith("data: [DONE]")


def test_two_adapters_by_name(start_app):
    url, _ = start_app()
    c = client(url)
    assert {m.id for m in c.models.list().data} == {"tiny", "alpha", "beta"}

    def ask(model):
        return c.chat.completions.create(model=model, messages=MSG, max_tokens=10, temperature=0).choices[0].message.content

    a, b, base = ask("alpha"), ask("beta"), ask("tiny")
    assert len({a, b, base}) == 3, (a, b, base)
    assert ask("alpha") == a and ask("default") == base  # switching back and forth is stable
    with pytest.raises(openai.NotFoundError):
        ask("gamma")


def test_bad_input_is_400_naming_the_problem(start_app):
    url, _ = start_app(max_prompt_tokens=64, max_new_tokens=50)
    c = client(url)
    with pytest.raises(openai.BadRequestError, match="unknown role 'wizard'"):
        c.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "hi"}], max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="max_prompt_tokens=64"):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "长" * 400}], max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="max_new_tokens=50"):
        c.chat.completions.create(model="tiny", messages=MSG, max_tokens=51)
    r = httpx.post(f"{url}/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400
    assert c.chat.completions.create(model="tiny", messages=MSG, max_tokens=4).choices[0].message is not None


def test_api_key(start_app):
    url, _ = start_app(api_key="s3cret")
    with pytest.raises(openai.AuthenticationError):
        client(url, "wrong").chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
    assert httpx.post(f"{url}/v1/chat/completions", json={"messages": MSG}).status_code == 401
    r = client(url, "s3cret").chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_full_queue_is_429_and_server_recovers(start_app):
    url, app = start_app(max_batch_size=1, max_queue=1)
    c = client(url)
    results, lock = [], threading.Lock()

    def call():
        try:
            # min_tokens = max_tokens: each request really runs 100 steps, so the queue stays full
            r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=100, temperature=0,
                                          extra_body={"min_tokens": 100})
            out = ("ok", r.usage.completion_tokens)
        except openai.RateLimitError as e:
            out = ("429", e.response.headers.get("retry-after"))
        with lock:
            results.append(out)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    kinds = [k for k, _ in results]
    assert len(results) == 8 and kinds.count("429") >= 1 and kinds.count("ok") >= 1, results
    assert all(v == 100 for k, v in results if k == "ok")
    assert all(v == "1" for k, v in results if k == "429")
    # Afterwards it answers normally and its queue is empty again.
    assert c.chat.completions.create(model="tiny", messages=MSG, max_tokens=4).choices[0].message is not None
    health = httpx.get(f"{url}/health").json()
    assert health["waiting"] == 0 and health["running"] == 0
