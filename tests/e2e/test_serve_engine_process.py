"""`glmtune serve` as users start it: the engine in a child process with the torch threads asked for, answering
like the in-process engine, and gone when the server stops (no orphan)."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil

MSG = [{"role": "user", "content": "你好"}]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, *overrides):
    port = _port()
    log = tmp_path / f"serve{port}.log"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OMP_WAIT_POLICY", None)
    proc = subprocess.Popen([sys.executable, "-m", "glmtune", "serve", "--model", "tiny:glm4", "--port", str(port),
                             *overrides], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}", log
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, log.read_text()
        time.sleep(0.5)


def _ask(url):
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MSG, "max_tokens": 10, "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_serve_runs_the_engine_in_a_child_process(tmp_path):
    proc, url, log = _start(tmp_path, "serve.threads=2")
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        engine = [c for c in children if c.environ().get("OMP_WAIT_POLICY") == "PASSIVE"]
        assert len(engine) >= 1, [c.cmdline() for c in children]
        answer = _ask(url)
        assert "2 torch threads, engine process" in log.read_text()
        proc.terminate()  # the server alone: it stops its engine process itself
        proc.wait(30)
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert alive == [], [c.cmdline() for c in alive]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group if an assertion failed
        except ProcessLookupError:
            pass
    one, url1, log1 = _start(tmp_path, "serve.engine_process=false", "serve.threads=1")
    try:
        assert psutil.Process(one.pid).children() == []
        assert "1 torch thread)" in log1.read_text()
        assert _ask(url1) == answer  # the same greedy answer from the in-process engine
    finally:
        os.killpg(one.pid, signal.SIGTERM)
        one.wait(30)
