"""Shared fixtures: tiny models built once per machine (cached), one thread per process, `glmtune serve` in a
subprocess."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_glm4():
    from glmtune.models.tiny import ensure_tiny

    return ensure_tiny("glm4")


@pytest.fixture(scope="session")
def tiny_glm():
    from glmtune.models.tiny import ensure_tiny

    return ensure_tiny("glm")


@pytest.fixture(scope="session")
def tiny_llama():
    from glmtune.models.tiny import ensure_tiny

    return ensure_tiny("llama")


@pytest.fixture(params=["glm4", "glm"])
def tiny_glm_any(request):
    from glmtune.models.tiny import ensure_tiny

    return ensure_tiny(request.param)


@pytest.fixture(scope="session")
def cache_free_greedy():
    """Reference greedy decoding with no KV cache: every step re-runs the whole sequence through `net`
    (for a PEFT prefix model, `PeftModel.forward` prepends the learned prefix each time). Returns the new
    token ids, stopping before any of `stop_ids`."""
    import torch

    @torch.no_grad()
    def decode(net, ids: list[int], stop_ids, n: int) -> list[int]:
        seq, out = torch.tensor([ids]), []
        for _ in range(n):
            nxt = int(net(input_ids=seq, use_cache=False).logits[0, -1].argmax())
            if nxt in stop_ids:
                break
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
        return out

    return decode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`python -m glmtune serve ARGS --port P` as a user starts it, on a free port, in its own process group (the
    engine process, vLLM's workers), stdout and stderr to `log`; ready once `/v1/models` answers. `stop()` (or
    leaving a `with` block) ends the whole group: SIGTERM, then SIGKILL after `stop_s`.

    wait=False starts it without waiting (work done while it loads), then call `wait_ready()`."""

    def __init__(self, log: Path, *args, env: dict | None = None, startup_s: float = 300, stop_s: float = 30,
                 wait: bool = True):
        self.port, self.log, self.startup_s, self.stop_s = free_port(), Path(log), startup_s, stop_s
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "glmtune", "serve", *map(str, args), "--port",
                                          str(self.port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if wait:
            self.wait_ready()

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (`.../v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self) -> "ServeProcess":
        """Poll `/v1/models` until it answers 200; fail with the log's tail if the server exits or is not up
        within `startup_s` seconds from now."""
        import httpx

        deadline = time.time() + self.startup_s
        try:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"glmtune serve exited {self.proc.returncode}:\n{self.tail()}")
                try:
                    if httpx.get(f"{self.url}/models", timeout=2, trust_env=False).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise AssertionError(f"glmtune serve not up after {self.startup_s} s:\n{self.tail()}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        """SIGTERM to the group and `stop_s` seconds for the server to exit (stopping its children), then SIGKILL;
        if the server had exited already, SIGKILL at once for whatever is left of its group."""
        try:
            if self.proc.poll() is not None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                return
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(self.stop_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:  # the group is gone already
            self.proc.wait(10)

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="session")
def serve_process():
    """The `ServeProcess` class (a fixture so that tests in any import mode, module-scoped fixtures too, get it)."""
    return ServeProcess
