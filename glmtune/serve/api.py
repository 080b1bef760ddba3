"""OpenAI-compatible HTTP API: `/v1/chat/completions` (plain and SSE streaming), `/v1/models`, `/health`.

`create_app(served, cfg)` is the factory (uvicorn runs it in `serve/cli.py`; tests run it in a thread).
Every request goes through the batching engine, so concurrent requests are decoded together.
Limits answer with OpenAI-shaped errors instead of failing (PEERS.md pain 7: LF#4335, a second
overlapping request killed LLaMA-Factory's server): bad input 400 naming the problem, missing key 401,
unknown model 404, full queue 429 (with Retry-After), shutting down 503. CORS is off unless
`serve.cors_origins` lists origins; the bind address defaults to 127.0.0.1 (DESIGN.md rule 10).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from glmtune.serve import protocol as P
from glmtune.serve.batching import BatchingEngine, EngineClosed, GenRequest, QueueFull


def _error(status: int, message: str, type_: str, param: str | None = None, headers: dict | None = None):
    return JSONResponse(P.error_body(message, type_, param), status_code=status, headers=headers)


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        msg = e.get("msg", "").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


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
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["*"], allow_headers=["*"])

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request, err):  # FastAPI answers 422; OpenAI clients expect 400
        return _error(400, _validation_message(err), "invalid_request_error")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if cfg.api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
                return _error(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                              "authentication_error")
        return await call_next(request)

    @app.get("/health")
    async def health():
        pc = batcher.prefix_cache
        return {"status": "ok", "waiting": batcher.waiting, "running": batcher.running,
                "max_batch_size": batcher.max_batch_size, "max_queue": batcher.max_queue,
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
        prefix_len = engine.prefix_boundary(messages, ids) if batcher.prefix_cache is not None else 0
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req = GenRequest(prompt_ids=ids, max_new_tokens=max_new, temperature=body.temperature, top_p=body.top_p,
                         adapter=adapter, min_tokens=min(body.min_tokens, max_new), stop=body.stop_list(), prefix_len=prefix_len,
                         seed=body.seed, timeout_s=cfg.request_timeout_s,
                         sink=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        try:
            batcher.submit(req)
        except QueueFull as err:
            return _error(429, f"server busy: {err}; retry shortly", "rate_limit_error", headers={"Retry-After": "1"})
        except EngineClosed as err:
            return _error(503, str(err), "server_error")
        cid = P.new_id()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(batcher, req, events, cid, public, len(ids), include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            while True:
                kind, payload = await events.get()
                if kind == "error":
                    return _error(500, f"generation failed: {payload}", "server_error")
                if kind == "done":
                    break
        except asyncio.CancelledError:  # client went away
            batcher.cancel(req)
            raise
        return P.completion_body(cid, public, req.text, req.finish_reason, len(ids), _completion_tokens(req))

    return app


def _completion_tokens(req: GenRequest) -> int:
    # The stop token the model produced counts as generated, as in OpenAI's and vLLM's usage.
    return len(req.tokens) + (1 if req.finish_reason == "stop" else 0)


async def _sse(batcher, req: GenRequest, events: asyncio.Queue, cid: str, model: str, n_prompt: int,
               include_usage: bool):
    def line(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    try:
        yield line(P.chunk_body(cid, model, {"role": "assistant", "content": ""}))
        while True:
            kind, payload = await events.get()
            if kind == "delta":
                yield line(P.chunk_body(cid, model, {"content": payload}))
            elif kind == "error":
                yield line(P.error_body(f"generation failed: {payload}", "server_error"))
                break
            else:
                yield line(P.chunk_body(cid, model, {}, finish=payload))
                if include_usage:
                    yield line(P.chunk_body(cid, model, None, use=P.usage(n_prompt, _completion_tokens(req))))
                break
        yield "data: [DONE]\n\n"
    finally:  # also runs when the client disconnects mid-stream: free its batch slot
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
