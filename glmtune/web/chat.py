"""What the Chat tab talks to: a run, an export, adapters of several runs on one base, or a served endpoint.

Every source is an object with `name` and `stream(messages, max_new_tokens=, temperature=)`, so one function
(`glmtune.serve.webui.stream_reply`, also behind `glmtune webchat`) runs the exchange for all of them:
- a run or an export: `HFEngine.from_run` / `from_model_dir`, as `glmtune chat --run/--model`;
- a run plus other runs' adapters trained on the same base: `load_served`, as `glmtune serve --run R
  --adapter NAME=RUN`, and each answer runs on the batching engine with the adapter picked, as a request
  for that model name to `glmtune serve` does;
- an OpenAI-compatible endpoint (a running `glmtune serve`, vLLM, ...): the official `openai` client, streamed.
"""

from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Iterator

from glmtune.errors import GenerationError
from glmtune.web.workspace import WebError, Workspace


class EndpointChat:
    """A model behind an OpenAI-compatible `/v1` URL, answered by streaming chat completions."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 600.0):
        import openai

        url = (base_url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise WebError(f"endpoint {base_url!r}: give an http(s) URL such as http://127.0.0.1:8000/v1")
        self.client = openai.OpenAI(base_url=url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=1)
        self.url = url
        self.model = model or None
        self.name = f"{self.model or '?'} @ {url}"

    def models(self) -> list[str]:
        """The endpoint's model names (`GET /v1/models`): the served run and each of its adapters."""
        import openai

        try:
            return [m.id for m in self.client.models.list()]
        except openai.OpenAIError as err:
            raise WebError(f"endpoint {self.url}: {type(err).__name__}: {err}") from None

    def stream(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0) -> Iterator[str]:
        import openai

        if not self.model:
            raise GenerationError(f"endpoint {self.url}: pick a model name (Load lists them)")
        try:
            chunks = self.client.chat.completions.create(model=self.model, messages=messages, stream=True,
                                                         max_tokens=max_new_tokens, temperature=temperature,
                                                         top_p=top_p)
            for chunk in chunks:
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        yield choice.delta.content
        except openai.OpenAIError as err:  # refused, unreachable, wrong key: the page says so and stays usable
            raise GenerationError(f"endpoint {self.url} ({self.model}): {type(err).__name__}: {err}") from err


class AdapterChat:
    """One model name of a `Served` base (`load_served`): the run's adapter, another run's, or the plain base."""

    def __init__(self, served, public: str):
        if public not in served.names:
            raise WebError(f"model {public!r} is not loaded; loaded: {sorted(served.names)}")
        self.served, self.name = served, public

    def stream(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0) -> Iterator[str]:
        from glmtune.inference.batching import GenRequest

        engine = self.served.engine
        events: queue.Queue = queue.Queue()
        req = GenRequest(prompt_ids=engine.prompt_ids(messages), max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, adapter=self.served.resolve(self.name),
                         sink=events.put)
        batcher = engine._batching()  # the engine's own batching engine: adapters switch per batch there
        batcher.submit(req)
        try:
            while True:
                kind, payload = events.get()
                if kind == "delta":
                    if payload:
                        yield payload
                elif kind == "error":
                    raise GenerationError(f"generation failed in {self.name}: {payload}")
                else:
                    return
        finally:
            if req.finish_reason is None:
                batcher.cancel(req)  # the page went away mid-answer


def run_base(run_dir: Path) -> tuple[str, bool]:
    """(the base a run was trained on, whether what it trained is a PEFT adapter)."""
    from glmtune.run.folder import Run

    run = Run.open(run_dir)
    return run.base, (run.artifact / "adapter_config.json").exists()


def adapter_runs(ws: Workspace, run: str) -> list[str]:
    """Other finished runs whose adapter was trained on the same base as `run` (choices for several adapters)."""
    from glmtune.models.load import resolve_path

    from glmtune.run.folder import is_finished

    path = ws.resolve(run)
    if not is_finished(path):
        return []
    base = str(resolve_path(run_base(path)[0]))
    out = []
    for other in ws.runs(finished_only=True):
        p = ws.resolve(other)
        if p == path:
            continue
        b, is_adapter = run_base(p)
        if is_adapter and str(resolve_path(b)) == base:
            out.append(other)
    return out


def adapter_name(rel: str) -> str:
    return Path(rel).name


class ChatModels:
    """The one model the Chat tab holds in memory, keyed by what was loaded (one at a time: memory is finite)."""

    def __init__(self, ws: Workspace):
        import threading

        self.ws = ws
        self.key = None
        self.value = None  # an HFEngine or a Served
        self.lock = threading.Lock()

    def get(self, source: str, adapters: list[str] | None = None, pick: str | None = None,
            endpoint_model: str | None = None, api_key: str | None = None):
        """A chat source: 'run: runs/X', 'export: exports/Y' or 'endpoint: URL' (+ adapters / model pick)."""
        from glmtune.inference.engine import HFEngine

        if not source or ": " not in source:
            raise WebError("pick a run, an export, or type endpoint: http://HOST:PORT/v1")
        kind, rel = source.split(": ", 1)
        if kind == "endpoint":
            return EndpointChat(rel, endpoint_model, api_key)
        if kind not in ("run", "export"):
            raise WebError(f"{source!r}: a source starts with 'run: ', 'export: ' or 'endpoint: '")
        path = self.ws.resolve(rel)
        adapters = sorted(set(adapters or [])) if kind == "run" else []
        key = (str(path), tuple(adapters))
        with self.lock:
            if self.key != key:
                self.key, self.value = None, None  # drop the previous model before loading the next
                if adapters:
                    from glmtune.serve.loading import load_served

                    self.value = load_served(run=str(path), adapters={adapter_name(a): str(self.ws.resolve(a))
                                                                      for a in adapters})
                elif kind == "run":
                    self.value = HFEngine.from_run(path)
                else:
                    self.value = HFEngine.from_model_dir(str(path))
                self.key = key
            value = self.value
        if hasattr(value, "names"):  # a Served: answer with the picked model name (default: the run itself)
            return AdapterChat(value, pick if pick in value.names else value.default)
        return value

    def names(self) -> list[str]:
        """Model names the loaded source answers with (several with adapters, else its one name)."""
        value = self.value
        if value is None:
            return []
        return list(value.names) if hasattr(value, "names") else [value.name]
