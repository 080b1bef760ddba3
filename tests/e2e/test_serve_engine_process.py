"""`glmtune serve` as users start it: the engine in a child process with the torch threads asked for, answering
like the in-process engine, and gone when the server stops (no orphan)."""

import os

import httpx
import psutil

MSG = [{"role": "user", "content": "你好"}]


def _start(serve_process, log, *overrides):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OMP_WAIT_POLICY", None)
    return serve_process(log, "--model", "tiny:glm4", *overrides, env=env, startup_s=120)


def _ask(server):
    r = httpx.post(f"{server.url}/chat/completions", json={"messages": MSG, "max_tokens": 10, "temperature": 0},
                   timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_serve_runs_the_engine_in_a_child_process(serve_process, tmp_path):
    with _start(serve_process, tmp_path / "serve_engine_process.log", "serve.threads=2") as server:
        proc = server.proc
        children = psutil.Process(proc.pid).children(recursive=True)
        engine = [c for c in children if c.environ().get("OMP_WAIT_POLICY") == "PASSIVE"]
        assert len(engine) >= 1, [c.cmdline() for c in children]
        answer = _ask(server)
        assert "2 torch threads, engine process" in server.log.read_text()
        proc.terminate()  # the server alone: it stops its engine process itself
        proc.wait(30)
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert alive == [], [c.cmdline() for c in alive]
    with _start(serve_process, tmp_path / "serve_in_process.log", "serve.engine_process=false",
                "serve.threads=1") as one:
        assert psutil.Process(one.proc.pid).children() == []
        assert "1 torch thread)" in one.log.read_text()
        assert _ask(one) == answer  # the same greedy answer from the in-process engine
