"""`serve.engine_process`: the batching engine in a child process, the HTTP API in the parent. Same answers as
the in-process engine, the same overload answers, cancel on disconnect, and no hang when the engine dies."""

import threading
import time

import httpx
import openai
import pytest

MSG = [{"role": "user", "content": "你好，今天天气怎么样？"}]


def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture
def start_proc(tiny_glm4, adapters):
    """start_proc(**serve_overrides) -> (base_url, EngineProcess); the engine process stops at test end."""
    from glmtune.serve.api import create_app, serve_in_thread
    from glmtune.serve.config import ServeSection
    from glmtune.serve.engine_process import EngineProcess

    started = []

    def start(**overrides):
        cfg = ServeSection(**{"max_prompt_tokens": 256, "max_new_tokens": 128, **overrides})
        batcher = EngineProcess(dict(model=str(tiny_glm4), adapters=adapters, name="tiny"), cfg, threads=1)
        server, url = serve_in_thread(create_app(batcher.served_models(), cfg, batcher=batcher))
        started.append((server, batcher))
        return url, batcher

    yield start
    for server, batcher in started:
        server.should_exit = True
        server.thread.join(timeout=10)
        batcher.close()
        assert not batcher.proc.is_alive()


def answers(url):
    """Greedy plain, greedy streamed, an adapter, and n=2 seeded samples."""
    c = client(url)
    plain = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0)
    stream = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    alpha = c.chat.completions.create(model="alpha", messages=MSG, max_tokens=10, temperature=0)
    sampled = c.chat.completions.create(model="beta", messages=MSG, max_tokens=10, temperature=0.9, seed=7, n=2)
    return {"plain": (plain.choices[0].message.content, plain.choices[0].finish_reason,
                      plain.usage.prompt_tokens, plain.usage.completion_tokens),
            "stream": ("".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices),
                       chunks[-1].usage.completion_tokens),
            "alpha": alpha.choices[0].message.content,
            "sampled": [ch.message.content for ch in sampled.choices]}


def test_same_answers_as_the_in_process_engine(start_app, start_proc):
    url_thread, _ = start_app()
    url_proc, batcher = start_proc()
    assert batcher.proc.is_alive() and batcher.proc.pid != threading.get_native_id()
    assert {m.id for m in client(url_proc).models.list().data} == {"tiny", "alpha", "beta"}
    got, want = answers(url_proc), answers(url_thread)
    assert got == want
    assert got["plain"][0] == got["stream"][0] and got["sampled"][0] != got["sampled"][1]
    health = httpx.get(f"{url_proc}/health").json()
    assert health["served"] == 5 and health["running"] == 0 and health["waiting"] == 0
    assert health["prefix_cache"]["max_tokens"] == 32768


def test_full_queue_is_429_and_server_recovers(start_proc):
    url, _ = start_proc(max_batch_size=1, max_queue=1)
    c = client(url)
    results, lock = [], threading.Lock()

    def call():
        try:
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
    assert all(v == 100 for k, v in results if k == "ok") and all(v == "1" for k, v in results if k == "429")
    assert c.chat.completions.create(model="tiny", messages=MSG, max_tokens=4).choices[0].message is not None
    health = httpx.get(f"{url}/health").json()
    assert health["waiting"] == 0 and health["running"] == 0


def test_disconnect_cancels_in_the_engine(start_proc):
    url, batcher = start_proc()
    body = {"model": "tiny", "messages": MSG, "max_tokens": 120, "temperature": 0, "min_tokens": 120, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert sum(1 for line, _ in zip(lines, range(6)) if line.startswith("data: ")) >= 3
    deadline = time.time() + 30
    while time.time() < deadline and not (batcher.cancelled == 1 and batcher.running == 0):
        time.sleep(0.1)
    health = httpx.get(f"{url}/health").json()
    assert health["cancelled"] == 1 and health["running"] == 0


def test_engine_death_fails_open_requests_and_answers_503(start_proc):
    url, batcher = start_proc()
    c = client(url)
    result = {}

    def call():
        try:
            c.chat.completions.create(model="tiny", messages=MSG, max_tokens=128, temperature=0,
                                      extra_body={"min_tokens": 128})
            result["out"] = "answered"
        except openai.APIStatusError as e:
            result["out"] = (e.status_code, e.message)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.time() + 30
    while batcher.running == 0 and time.time() < deadline:
        time.sleep(0.02)
    batcher.proc.kill()
    t.join(30)
    assert not t.is_alive() and result["out"][0] == 500 and "engine process exited" in result["out"][1], result
    with pytest.raises(openai.InternalServerError) as err:
        c.chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
    assert err.value.status_code == 503 and "engine process exited" in err.value.message


def test_load_error_is_raised_in_the_parent(tmp_path):
    from glmtune.errors import MissingFileError
    from glmtune.serve.config import ServeSection
    from glmtune.serve.engine_process import EngineProcess

    with pytest.raises(MissingFileError, match="no config.json there"):
        EngineProcess(dict(model=str(tmp_path)), ServeSection())
