"""Start and stop real `glmtune web` servers (subprocesses) on a free port."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebServer:
    def __init__(self, workspace: Path, log: Path):
        self.workspace, self.log_path = workspace, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, args=(), env=None):
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1",
               "NO_PROXY": "127.0.0.1,localhost", "PYTHONPATH": str(ROOT), **(env or {})}
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "glmtune", "web", "--workspace", str(self.workspace),
                                      "--port", str(self.port), *args], stdout=log, stderr=subprocess.STDOUT,
                                     env=env, cwd=ROOT)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.3)
        self.kill()
        pytest.fail("glmtune web did not start:\n" + self.log_path.read_text())

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


@pytest.fixture
def web_server(tmp_path):
    servers = []

    def make(workspace=None, args=(), env=None):
        server = WebServer(workspace or tmp_path / "ws", tmp_path / "web.log")
        servers.append(server)
        return server.start(args, env)

    yield make
    for s in servers:
        s.kill(signal.SIGTERM)
    from glmtune.web.jobs import RUNNING, JobStore

    for server in servers[:1]:  # leave no job process behind
        store = JobStore(server.workspace)
        for job in store.list():
            if job.status == RUNNING:
                store.stop(job.id)


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("needs /usr/bin/chromium: apt-get update && apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()
