"""Evaluation test helpers: a scripted engine (deterministic, counts calls, can die after N batches)."""

from dataclasses import dataclass

import pytest


@dataclass
class FakeCompletion:
    text: str
    prompt_tokens: int = 3
    completion_tokens: int = 2
    finish_reason: str = "stop"


class ScriptedEngine:
    """Answers each prompt via `answer(messages) -> str`; raises after `fail_after` batches."""

    def __init__(self, answer, fail_after=None):
        self.answer = answer
        self.fail_after = fail_after
        self.batches = []

    def generate(self, batch, max_new_tokens=128, temperature=0.0, top_p=1.0):
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.batches.append([m[-1]["content"] for m in batch])
        return [FakeCompletion(self.answer(m)) for m in batch]


@pytest.fixture
def scripted():
    """`scripted(answer_fn, fail_after=None)` -> ScriptedEngine."""
    return ScriptedEngine


@pytest.fixture
def serve_app():
    """`serve_app(app) -> base_url`: uvicorn on 127.0.0.1 and a free port, in a thread, stopped after the test."""
    import socket
    import threading
    import time

    import uvicorn

    servers = []

    def start(app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.time() + 30
        while not server.started:
            if time.time() > deadline or not thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)
