"""Web chat driven in headless Chromium: type a question, read the streamed reply, clear."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def webchat(tiny_glm4, tmp_path):
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1,localhost"}
    log = open(tmp_path / "webchat.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "glmtune", "webchat", "--model", str(tiny_glm4), "--port", str(port),
                             "--max-new-tokens", "12"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=Path(__file__).resolve().parents[2])
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    else:
        proc.kill()
    if proc.poll() is not None:
        pytest.fail("webchat did not start:\n" + (tmp_path / "webchat.log").read_text())
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(15)


def test_webchat_in_headless_chromium(webchat):
    if not Path(CHROMIUM).exists():
        pytest.skip("needs /usr/bin/chromium: apt-get update && apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(webchat, wait_until="domcontentloaded", timeout=60_000)
            box = page.locator("#msg textarea")
            box.wait_for(timeout=60_000)
            box.fill("你好，请介绍一下你自己。")
            box.press("Enter")
            chat = page.locator("#chat")
            chat.get_by_text("你好，请介绍一下你自己。").first.wait_for(timeout=60_000)
            # The reply is whatever the tiny model says; wait until a bot message with text appears.
            page.wait_for_function(
                """() => {const bots = document.querySelectorAll('#chat .bot, #chat [data-testid="bot"]');
                          return bots.length > 0 && bots[bots.length-1].innerText.trim().length > 0;}""",
                timeout=60_000)
            bots = page.locator('#chat .bot, #chat [data-testid="bot"]')
            assert bots.last.inner_text().strip()
            page.locator("#clear").click()
            page.wait_for_function(
                "() => !document.querySelector('#chat').innerText.includes('你好，请介绍一下你自己。')", timeout=30_000)
        finally:
            browser.close()
