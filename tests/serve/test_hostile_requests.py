"""Hostile but fair clients: unsupported sampling fields, wrong types, disconnecting clients, overload."""

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

MSG = [{"role": "user", "content": "你好，今天天气怎么样？"}]


def client(url, key="none"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


# ---- fields glmtune does not implement are refused, never silently ignored; types are strict ------------------
UNSUPPORTED = [
    ("logprobs", True),
    ("top_logprobs", 2),
    ("frequency_penalty", 0.5),
    ("presence_penalty", -0.5),
    ("logit_bias", {"17": 5}),
    ("response_format", {"type": "json_object"}),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
]
WRONG_TYPES = [
    ("max_tokens", "8"),
    ("max_tokens", 8.0),
    ("max_tokens", True),
    ("temperature", "0.5"),
    ("stream", "false"),
    ("seed", "1"),
    ("n", "2"),
    ("n", 0),
]


@pytest.mark.parametrize("field,value", UNSUPPORTED + WRONG_TYPES, ids=lambda x: repr(x))
def test_unsupported_or_mistyped_field_is_400_naming_it(start_app, field, value):
    url, _ = start_app()
    body = {"model": "tiny", "messages": MSG, "max_tokens": 4, field: value}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == field, err
    assert err["message"].startswith(f"{field}:"), err
    # The official client surfaces the same message.
    extra = {k: v for k, v in body.items() if k not in ("model", "messages")}
    with pytest.raises(openai.BadRequestError, match=field):
        client(url).chat.completions.create(model="tiny", messages=MSG, extra_body=extra)


def test_unknown_field_is_400(start_app):
    url, _ = start_app()
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MSG, "max_tokens": 4, "top_kk": 5}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_kk", r.text
    # `curl -d` without -H sends a form content type: say so rather than "Input should be a valid dictionary".
    r = httpx.post(f"{url}/v1/chat/completions", content=json.dumps({"messages": MSG}).encode(), timeout=60,
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "Content-Type: application/json" in r.json()["error"]["message"], r.text


def test_neutral_values_of_those_fields_are_accepted(start_app):
    url, _ = start_app()
    c = client(url)
    r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=0, logprobs=False, n=1,
                                  frequency_penalty=0, presence_penalty=0.0, response_format={"type": "text"},
                                  user="u1", extra_body={"logit_bias": {}, "tools": [], "temperature": 0})
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].logprobs is None
    # OpenAI accepts explicit nulls for optional parameters; so do we (they mean the default).
    r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                   json={"messages": MSG, "max_tokens": 4, "temperature": None, "top_p": None, "n": None,
                         "logprobs": None, "frequency_penalty": None, "stop": None, "seed": None})
    assert r.status_code == 200, r.text
    # An integer where a float is expected is fine (8 and 1 here); the reverse is not (see above).
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MSG, "max_tokens": 8, "temperature": 1},
                   timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 8, r.text


def test_n_choices(start_app):
    url, _ = start_app(max_batch_size=4)
    c = client(url)
    one = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=0)
    greedy = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=0, n=3)
    assert [ch.index for ch in greedy.choices] == [0, 1, 2]
    assert {ch.message.content for ch in greedy.choices} == {one.choices[0].message.content}
    assert greedy.usage.prompt_tokens == one.usage.prompt_tokens
    assert greedy.usage.completion_tokens == 3 * one.usage.completion_tokens
    # Sampled choices differ from each other and are reproducible with a seed, streaming or not.
    kw = dict(model="tiny", messages=MSG, max_tokens=12, temperature=1.0, seed=7, n=3)
    sampled = [ch.message.content for ch in c.chat.completions.create(**kw).choices]
    assert len(set(sampled)) == 3, sampled
    assert [ch.message.content for ch in c.chat.completions.create(**kw).choices] == sampled
    pieces: dict[int, str] = {}
    finishes: dict[int, str] = {}
    chunks = list(c.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    for ch in chunks:
        for choice in ch.choices:
            pieces[choice.index] = pieces.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert [pieces[i] for i in range(3)] == sampled and set(finishes) == {0, 1, 2}
    assert chunks[-1].usage.completion_tokens == c.chat.completions.create(**kw).usage.completion_tokens
    # More choices than the batch holds: 400 naming n.
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MSG, "max_tokens": 4, "n": 5}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n" and "max_batch_size=4" in r.text, r.text


# ---- a non-streaming client that goes away: its generation is cancelled and its batch slot freed -------------
@pytest.mark.parametrize("api_key", [None, "k"])  # the key check sits in front of the handler: must not hide it
def test_disconnected_plain_client_is_cancelled(start_app, api_key):
    max_tokens = 4000
    url, app = start_app(max_new_tokens=max_tokens, api_key=api_key)
    batcher = app.state.batcher
    submitted = []
    real_submit = batcher.submit

    def recording_submit(req):  # observe the request the API builds (the engine itself is untouched)
        submitted.append(req)
        return real_submit(req)

    batcher.submit = recording_submit
    body = {"model": "tiny", "messages": MSG, "max_tokens": max_tokens, "min_tokens": max_tokens}
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=1.0)
    gone = time.monotonic()
    # How many tokens it had when the client left; then it must stop within a few decode steps.
    deadline = gone + 60
    while (batcher.running or batcher.waiting or not submitted or submitted[0].finish_reason is None) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    req = submitted[0]
    assert req.finish_reason == "cancelled", (req.finish_reason, len(req.tokens))
    assert len(req.tokens) < max_tokens // 2, len(req.tokens)
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["running"] == 0 and health["waiting"] == 0 and health["cancelled"] == 1, health
    # The freed slot serves the next client at once.
    r = client(url, api_key or "none").chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")


# ---- overload: every answer is an OpenAI-style JSON error with Retry-After ------------------------------------
def _flood(url: str, n: int, body: dict, timeout: float = 120) -> list[httpx.Response | Exception]:
    results: list = [None] * n
    start = threading.Barrier(n)

    def one(i):
        with httpx.Client(timeout=timeout) as c:
            start.wait()
            try:
                results[i] = c.post(f"{url}/v1/chat/completions", json=body)
            except Exception as err:  # noqa: BLE001 - reported by the assertion below
                results[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    return results


def _assert_json_overload(results) -> dict[int, int]:
    codes: dict[int, int] = {}
    for r in results:
        assert isinstance(r, httpx.Response), r
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        if r.status_code == 200:
            continue
        assert r.status_code in (429, 503), (r.status_code, r.text)
        assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text)
        err = r.json()["error"]
        assert err["type"] in ("rate_limit_error", "server_error") and "retry" in err["message"], err
        assert r.headers.get("retry-after") == "1", dict(r.headers)
    return codes


def test_concurrency_limit_answers_json_503_with_retry_after(start_app):
    url, app = start_app(max_batch_size=1, max_queue=32, max_concurrent_requests=3)
    body = {"messages": MSG, "max_tokens": 30, "min_tokens": 30}
    codes = _assert_json_overload(_flood(url, 12, body))
    assert codes.get(503, 0) >= 1 and codes.get(200, 0) >= 1, codes
    r = httpx.get(f"{url}/health", timeout=10).json()  # /health is exempt and the server recovers
    assert r["status"] == "ok" and r["running"] == 0 and r["waiting"] == 0
    assert client(url).chat.completions.create(model="tiny", messages=MSG, max_tokens=4).choices


@pytest.mark.slow
def test_cli_server_overload_is_json_with_retry_after(tiny_glm4, tmp_path):
    """The real `glmtune serve` process: more connections than its limits allow, all at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "glmtune", "serve", "--model", str(tiny_glm4), "--port", str(port),
                             "serve.max_batch_size=1", "serve.max_queue=4", "serve.max_new_tokens=64"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        # Limits: 1 running + 4 queued (+ headroom): 48 simultaneous clients overload it.
        codes = _assert_json_overload(_flood(url, 48, {"messages": MSG, "max_tokens": 20, "min_tokens": 20}))
        assert codes.get(200, 0) >= 1 and codes.get(200, 0) < 48, codes
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert health["running"] == 0 and health["waiting"] == 0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_browser_clients_with_api_key_and_cors(start_app):
    """A preflight needs no key, and a 401 or 503 carries the CORS header so the page can read the error."""
    origin = "http://app.example"
    url, _ = start_app(api_key="k", cors_origins=[origin], max_concurrent_requests=1)
    pre = httpx.options(f"{url}/v1/chat/completions", timeout=30, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200 and pre.headers.get("access-control-allow-origin") == origin, pre.text
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MSG}, headers={"Origin": origin}, timeout=30)
    assert r.status_code == 401 and r.headers.get("access-control-allow-origin") == origin


def test_cancelled_waiting_request_leaves_the_queue_at_once(served):
    """A request cancelled while queued frees its queue place now, not when it reaches the head."""
    from glmtune.inference.batching import BASE, BatchingEngine, GenRequest

    be = BatchingEngine(served.engine, max_batch_size=1, max_queue=2)
    events = []
    try:
        ids = served.engine.prompt_ids(MSG)
        long = be.submit(GenRequest(prompt_ids=ids, max_new_tokens=3000, min_tokens=3000, adapter=BASE))
        queued = be.submit(GenRequest(prompt_ids=ids, max_new_tokens=4, adapter=BASE, sink=events.append))
        deadline = time.monotonic() + 30
        while be.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert be.running == 1 and be.waiting == 1
        be.cancel(queued)
        assert queued.finish_reason == "cancelled" and be.waiting == 0 and events == [("done", "cancelled")]
        assert be.cancelled == 1 and long.finish_reason is None  # the running one goes on
        be.cancel(long)
        while long.finish_reason is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert long.finish_reason == "cancelled" and len(long.tokens) < 3000 and be.cancelled == 2
    finally:
        be.close()
