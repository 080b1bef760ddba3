"""OpenAI-compatible HTTP API: `/v1/chat/completions` (plain and SSE streaming, n choices), `/v1/models`, `/health`.

`create_app(served, cfg)` is the factory (uvicorn runs it in `serve/cli.py`; tests run it in a thread).
Every request goes through the batching engine, so concurrent requests are decoded together.
Limits answer with OpenAI-shaped JSON errors instead of failing (a second overlapping request killed
LLaMA-Factory's server, LF#4335): bad input 400 naming the field, missing key 401, unknown model 404,
full queue 429 and too many requests in flight 503 (both with Retry-After), shutting down 503. A client
that disconnects has its generation cancelled. CORS is off unless `serve.cors_origins` lists origins;
the bind address defaults to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from glmtune.serve import protocol as P
from glmtune.inference.batching import BatchingEngine, EngineClosed, GenRequest, QueueFull


def _error(status: int, message: str, type_: str, param: str | None = None, headers: dict | None = None,
           code: str | None = None):
    return JSONResponse(P.error_body(message, type_, param, code), status_code=status, headers=headers)


RETRY_AFTER_S = "1"
DISCONNECT_POLL_S = 0.2


class ApiKeyAuth:
    """ASGI middleware: /v1/ paths need 'Authorization: Bearer <key>' (401 otherwise).

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware wraps `receive` so
    that `request.is_disconnected()` never sees a client leave, and the chat handler relies on it.
    """

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                  "authentication_error")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class ConcurrencyLimit:
    """ASGI middleware: at most `limit` HTTP requests in flight (queued, generating or streaming); the next
    one gets an OpenAI-style JSON 503 with Retry-After. Paths in `exempt` (/health) are never refused.

    Hand-written because uvicorn's `limit_concurrency` answers a plain-text 503 without Retry-After, which
    OpenAI clients cannot parse or back off from, and Starlette/FastAPI ship no concurrency limit.
    Single event loop: the counter needs no lock.
    """

    def __init__(self, app, limit: int, exempt: tuple[str, ...] = ("/health",)):
        self.app, self.limit, self.exempt = app, limit, exempt
        self.in_flight = self.refused = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            self.refused += 1
            response = _error(503, f"server overloaded: {self.in_flight} requests in flight "
                                   f"(serve.max_concurrent_requests={self.limit}); retry after {RETRY_AFTER_S} s",
                              "server_error", headers={"Retry-After": RETRY_AFTER_S}, code="server_overloaded")
            return await response(scope, receive, send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


_UNION_TAG = re.compile(r"^(str|int|float|bool|dict|list|none)(\[.*\])?$|^function-")


def _validation_error(err: RequestValidationError) -> tuple[str, str | None]:
    """('field: problem; ...', first field) from pydantic's errors, for OpenAI's `message` and `param`."""
    parts, params = [], []
    for e in err.errors():
        # pydantic names the union member that failed (`stop.str`, `stop.list[str]`): the field is enough
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body" and not _UNION_TAG.match(str(x)))
        if e.get("type") == "extra_forbidden":
            msg = "unknown field (not a chat-completions parameter glmtune serves)"
        else:
            msg = e.get("msg", "").removeprefix("Value error, ")
        part = f"{loc}: {msg}" if loc else msg
        if part not in parts:
            parts.append(part)
        if loc and loc not in params:
            params.append(loc)
    return "; ".join(parts) or "invalid request", (params[0] if params else None)


def create_app(served, cfg=None, batcher: BatchingEngine | None = None) -> FastAPI:
    """`served` from `serve.loading.load_served`; `cfg` a ServeSection (limits, key, CORS)."""
    from glmtune.serve.config import ServeSection

    cfg = cfg or ServeSection()
    engine = served.engine
    batcher = batcher or BatchingEngine(engine, cfg.max_batch_size, cfg.max_queue, cfg.prefix_cache_tokens)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="glmtune", lifespan=lifespan)
    app.state.batcher, app.state.served = batcher, served
    @app.exception_handler(RequestValidationError)
    async def _bad_request(request, err):  # FastAPI answers 422; OpenAI clients expect 400
        message, param = _validation_error(err)
        ctype = request.headers.get("content-type", "")
        if ctype and "json" not in ctype and all(tuple(e.get("loc", ())) == ("body",) for e in err.errors()):
            message = f"the body must be JSON sent with 'Content-Type: application/json' (got {ctype!r})"
        return _error(400, message, "invalid_request_error", param)

    if cfg.api_key:
        app.add_middleware(ApiKeyAuth, key=cfg.api_key)

    # The last added is the outermost: an overloaded server refuses before any other work, and CORS wraps
    # everything so that browsers can read 401/503 answers too and preflights need no API key.
    limit = cfg.max_concurrent_requests or cfg.max_queue + cfg.max_batch_size + 16
    app.add_middleware(ConcurrencyLimit, limit=limit)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["*"], allow_headers=["*"])

    @app.get("/health")
    async def health():
        pc = batcher.prefix_cache
        return {"status": "ok", "waiting": batcher.waiting, "running": batcher.running, "served": batcher.served,
                "cancelled": batcher.cancelled, "max_batch_size": batcher.max_batch_size, "max_queue": batcher.max_queue,
                "prefix_cache": pc.stats() if pc is not None else None}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "glmtune"}
                                           for n in served.names]}

    @app.post("/v1/chat/completions")
    async def chat(body: P.ChatCompletionRequest, request: Request):
        try:
            adapter = served.resolve(body.model)
        except KeyError:
            return _error(404, f"model {body.model!r} is not served; available: {sorted(served.names)}",
                          "not_found_error", "model")
        public = body.model if body.model in served.names else served.default
        max_new = body.new_tokens(min(256, cfg.max_new_tokens))
        if max_new > cfg.max_new_tokens:
            return _error(400, f"max_tokens={max_new} exceeds the limit serve.max_new_tokens={cfg.max_new_tokens}",
                          "invalid_request_error", "max_tokens")
        messages = [m.model_dump() for m in body.messages]
        try:
            ids = engine.prompt_ids(messages)
        except Exception as err:  # the chat template rejected the conversation
            return _error(400, f"messages cannot be rendered with the model's chat template: {err}",
                          "invalid_request_error", "messages")
        if len(ids) > cfg.max_prompt_tokens:
            return _error(400, f"prompt has {len(ids)} tokens; the limit is serve.max_prompt_tokens="
                               f"{cfg.max_prompt_tokens}", "invalid_request_error", "messages")
        if body.n > cfg.max_batch_size:
            return _error(400, f"n={body.n} exceeds serve.max_batch_size={cfg.max_batch_size} (the choices of one "
                               "request are decoded together)", "invalid_request_error", "n")
        prefix_len = engine.prefix_boundary(messages, ids) if batcher.prefix_cache is not None else 0
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()  # (choice index, (kind, payload)) from the scheduler thread

        def sink(i):
            return lambda ev: loop.call_soon_threadsafe(events.put_nowait, (i, ev))

        # n choices = n requests of the batch; with a seed, choice i samples with seed + i (distinct, reproducible)
        reqs = [GenRequest(prompt_ids=ids, max_new_tokens=max_new, temperature=body.temperature, top_p=body.top_p,
                           adapter=adapter, min_tokens=min(body.min_tokens, max_new), stop=body.stop_list(),
                           prefix_len=prefix_len, seed=None if body.seed is None else body.seed + i,
                           timeout_s=cfg.request_timeout_s, sink=sink(i)) for i in range(body.n)]
        try:
            for req in reqs:
                batcher.submit(req)
        except (QueueFull, EngineClosed) as err:
            for req in reqs:  # all choices or none
                batcher.cancel(req)
            if isinstance(err, EngineClosed):
                return _error(503, str(err), "server_error")
            return _error(429, f"server busy: {err}; retry after {RETRY_AFTER_S} s", "rate_limit_error",
                          headers={"Retry-After": RETRY_AFTER_S})
        cid = P.new_id()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(batcher, reqs, events, cid, public, len(ids), include_usage,
                                          ids if body.return_token_ids else None),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        # A plain (non-streaming) client that goes away is noticed here, not by the server: nothing is sent
        # until the end, so poll for the disconnect while waiting and free the requests' batch slots.
        getter, checked, pending = None, time.monotonic(), set(range(len(reqs)))
        try:
            while pending:
                getter = getter or asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
                if time.monotonic() - checked >= DISCONNECT_POLL_S:  # deltas keep coming: poll by the clock
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return _error(499, "client closed the request", "invalid_request_error")
                if not done:
                    continue
                i, (kind, payload) = getter.result()
                getter = None
                if kind == "error":
                    return _error(500, f"generation failed: {payload}", "server_error")
                if kind == "done":
                    pending.discard(i)
        finally:  # disconnect, error, or the server cancelling the handler (shutdown): free every slot
            if getter is not None:
                getter.cancel()
            for req in reqs:
                if req.finish_reason is None:
                    batcher.cancel(req)
        return P.completion_body(cid, public, [(r.text, r.finish_reason) for r in reqs], len(ids),
                                 sum(_completion_tokens(r) for r in reqs), *(
                                     (ids, [_generated_ids(r) for r in reqs]) if body.return_token_ids else ()))

    return app


def _generated_ids(req: GenRequest) -> list[int]:
    """The ids a choice generated: the stop token the model produced is one of them (vLLM's `token_ids`);
    an answer ended by a stop string ends on the token that completed it."""
    return req.tokens + ([req.stop_token] if req.stop_token is not None else [])


def _completion_tokens(req: GenRequest) -> int:
    # The stop token the model produced counts as generated, as in OpenAI's and vLLM's usage.
    return len(_generated_ids(req))


async def _sse(batcher, reqs: list[GenRequest], events: asyncio.Queue, cid: str, model: str, n_prompt: int,
               include_usage: bool, prompt_ids: list[int] | None = None):
    """SSE chunks. With `return_token_ids` (`prompt_ids` given): the first chunk carries the prompt's ids, and a
    choice's finish chunk carries all the ids it generated (the deltas before it carry none: the engine hands
    them over with the finish), so the ids of a choice's chunks add up to the non-streamed `token_ids`."""
    def line(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    try:
        for i in range(len(reqs)):
            yield line(P.chunk_body(cid, model, {"role": "assistant", "content": ""}, index=i,
                                    prompt_ids=prompt_ids if i == 0 else None))
        pending, failed = set(range(len(reqs))), False
        while pending and not failed:
            # Everything already queued goes out in one write, a choice's consecutive deltas in one chunk: when
            # this side falls behind the engine (many streams), it sends fewer, longer chunks (as vLLM does)
            # instead of one chunk and one write per token. The text is the same.
            batch = [await events.get()]
            while not events.empty():
                batch.append(events.get_nowait())
            merged: list = []
            for i, (kind, payload) in batch:
                if kind == "delta" and merged and merged[-1][0] == i and merged[-1][1] == "delta":
                    merged[-1][2] += payload
                else:
                    merged.append([i, kind, payload])
            out = []
            for i, kind, payload in merged:
                if kind == "delta":
                    out.append(line(P.chunk_body(cid, model, {"content": payload}, index=i)))
                elif kind == "error":
                    out.append(line(P.error_body(f"generation failed: {payload}", "server_error")))
                    failed = True
                    break
                else:
                    out.append(line(P.chunk_body(cid, model, {}, finish=payload, index=i, token_ids=(
                        _generated_ids(reqs[i]) if prompt_ids is not None else None))))
                    pending.discard(i)
            yield "".join(out)
        if include_usage and not failed:
            use = P.usage(n_prompt, sum(_completion_tokens(r) for r in reqs))
            yield line(P.chunk_body(cid, model, None, use=use))
        yield "data: [DONE]\n\n"
    finally:  # also runs when the client disconnects mid-stream: free its batch slots
        for req in reqs:
            if req.finish_reason is None:
                batcher.cancel(req)


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
    """Start uvicorn in a daemon thread (tests, benchmarks); returns (server, base_url). Stop: server.should_exit = True."""
    import socket
    import threading

    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    server.thread = thread
    return server, f"http://{host}:{port}"
