"""`glmtune serve`'s batching engine in a process of its own (`serve.engine_process`, on by default).

In one process, the HTTP thread (uvicorn, JSON, SSE) and the scheduler thread (which holds the GIL between
torch calls) take turns: on a busy machine, whenever the thread holding the GIL is descheduled, the other
stops too. vLLM splits its API server from its engine for the same reason. Here the child process loads
the model and runs the `BatchingEngine`; the HTTP process keeps only the tokenizer (prompts are rendered and
checked there, so a bad request never reaches the engine) and an `EngineProcess`, which offers the engine's
client side (`submit`, `cancel`, the counters, `close`) to `serve.api.create_app`.

The two talk over one `multiprocessing` pipe. Requests go down as plain fields; the engine sends its events
back once per scheduler step (all deltas of the step and the counters in one message), not once per token.
If the engine process dies, every open request ends with an error and new ones get 503 (`EngineClosed`).
Hand-written: the standard library gives the pipe and the process; no serving library offers an engine
process for a transformers model that glmtune's continuous batching could plug into.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import threading
import time

from glmtune.errors import RunFailure
from glmtune.inference.batching import BatchingEngine, EngineClosed, GenRequest, QueueFull

# GenRequest fields that travel to the engine process (the rest is state the engine fills in)
_FIELDS = ("prompt_ids", "max_new_tokens", "temperature", "top_p", "adapter", "min_tokens", "stop", "seed",
           "timeout_s", "prefix_len")
READY_TIMEOUT_S = 1800  # a large model on a slow disk; the child's own errors come back at once


class EngineProcessUnavailable(RuntimeError):
    """The engine cannot run apart from the HTTP process (`glmtune serve` then runs it in-process, saying so)."""


class Front:
    """What the HTTP process needs of the engine: the model's name and prompt rendering (tokenizer only)."""

    def __init__(self, tokenizer, name: str):
        self.tokenizer, self.name = tokenizer, name

    # the same rendering as the engine's own (HFEngine's methods use only the tokenizer)
    def prompt_ids(self, messages):
        from glmtune.inference.engine import HFEngine

        return HFEngine.prompt_ids(self, messages)

    def prefix_boundary(self, messages, ids):
        from glmtune.inference.engine import HFEngine

        return HFEngine.prefix_boundary(self, messages, ids)


class _RemotePrefixCache:
    def __init__(self, owner):
        self._owner = owner

    def stats(self) -> dict:
        return dict(self._owner._stats.get("prefix_cache") or {})


class EngineProcess:
    """Start the engine process, wait until its model is loaded, and serve as the API's `batcher`.

    `load`: keyword arguments of `serve.loading.load_served` (run, model, adapters). `threads`: torch intra-op
    threads of the engine (None: torch's default, $OMP_NUM_THREADS or the physical cores). Errors while
    loading (a wrong path, a bad adapter) are raised here, as the in-process loading would raise them."""

    def __init__(self, load: dict, cfg, threads: int | None = None):
        ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads is unsafe
        self._conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_engine_main, args=(child, load, cfg.model_dump(), threads),
                                name="glmtune-engine", daemon=True)
        # OpenMP threads that spin at every barrier (libgomp's default) waste the cores they share with the HTTP
        # process and other jobs: 16 grading prompts on 2 threads of a 2-core machine at load 3.7 took 17 s
        # wall / 13.5 CPU s spinning, 5.2 s / 4.8 s passive, against 6.6 s / 4.4 s on one thread. The child
        # reads it when it loads OpenMP; a value the user set wins.
        saved = os.environ.get("OMP_WAIT_POLICY")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            self.proc.start()
        finally:
            if saved is None:
                os.environ.pop("OMP_WAIT_POLICY", None)
        child.close()
        if not self._conn.poll(READY_TIMEOUT_S):
            self.proc.kill()
            raise RunFailure(f"the engine process did not load the model in {READY_TIMEOUT_S} s")
        try:
            kind, info = self._conn.recv()
        except EOFError:
            self.proc.join(5)
            raise RunFailure(f"the engine process exited (code {self.proc.exitcode}) while loading the model; "
                             "is there enough memory?") from None
        if kind == "failed":
            self.proc.join(5)
            raise info
        try:
            if info["tokenizer"] is None:
                raise TypeError(info["tokenizer_error"])
            from transformers.dynamic_module_utils import init_hf_modules

            init_hf_modules()  # a remote-code tokenizer's class lives in transformers_modules
            tokenizer = pickle.loads(info["tokenizer"])
        except Exception as err:
            self._conn.send(("close",))
            self.proc.join(15)
            raise EngineProcessUnavailable(f"the tokenizer cannot be sent to the HTTP process "
                                           f"({type(err).__name__}: {err})") from err
        self.max_batch_size, self.max_queue = cfg.max_batch_size, cfg.max_queue
        self.threads = info["threads"]
        self.front = Front(tokenizer, info["name"])
        self.names, self.default = info["names"], info["default"]
        self.prefix_cache = _RemotePrefixCache(self) if cfg.prefix_cache_tokens > 0 else None
        self._stats: dict = {"waiting": 0, "running": 0, "served": 0, "cancelled": 0, "errors": 0, "seq": 0}
        self._reqs: dict[int, GenRequest] = {}
        self._rid = {}  # id(request) -> request id, while it is open
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._send_lock = threading.Lock()
        self._closed = False
        self._gone = "the engine is shutting down"  # why submit() answers EngineClosed once closed
        self._reader = threading.Thread(target=self._read, name="glmtune-engine-events", daemon=True)
        self._reader.start()

    def served_models(self):
        """A `serve.loading.Served` for `create_app`: the names the engine serves, rendered by `front`."""
        from glmtune.serve.loading import Served

        return Served(self.front, self.default, dict(self.names))

    # ---- the BatchingEngine client interface ----------------------------------------------------
    @property
    def waiting(self) -> int:
        # the engine's count at its last step, plus the requests sent since that it had not yet received
        return self._stats["waiting"] + max(0, self._last_seq - self._stats["seq"])

    @property
    def running(self) -> int:
        return self._stats["running"]

    @property
    def served(self) -> int:
        return self._stats["served"]

    @property
    def cancelled(self) -> int:
        return self._stats["cancelled"]

    @property
    def errors(self) -> int:
        return self._stats["errors"]

    def submit(self, req: GenRequest) -> GenRequest:
        with self._send_lock:
            if self._closed:
                raise EngineClosed(self._gone)
            if self.waiting >= self.max_queue:
                raise QueueFull(f"{self.waiting} requests are waiting (serve.max_queue={self.max_queue})")
            rid = next(self._seq)
            req.enqueued_at = time.monotonic()
            self._reqs[rid], self._rid[id(req)] = req, rid
            self._last_seq = rid
            try:
                self._conn.send(("submit", rid, {f: getattr(req, f) for f in _FIELDS}))
            except OSError:
                self._reqs.pop(rid, None)
                self._rid.pop(id(req), None)
                raise EngineClosed(self._gone) from None
        return req

    def cancel(self, req: GenRequest) -> None:
        req.cancelled = True
        rid = self._rid.get(id(req))
        if rid is None:
            return
        with self._send_lock:
            try:
                self._conn.send(("cancel", rid))
            except OSError:
                pass  # the engine is gone: the reader fails every open request

    def close(self) -> None:
        with self._send_lock:
            self._closed = True
            try:
                self._conn.send(("close",))
            except OSError:
                pass
        self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._reader.join(5)

    # ---- events from the engine -----------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                _, events, stats = self._conn.recv()
            except (EOFError, OSError):
                break
            self._stats = stats
            for rid, ev, extra in events:
                req = self._reqs.get(rid)
                if req is None:
                    continue
                if ev[0] in ("done", "error"):
                    self._reqs.pop(rid, None)
                    self._rid.pop(id(req), None)
                    if extra is not None:
                        req.text, req.tokens, req.cached_tokens, req.stop_token = extra
                    req.finish_reason = ev[1] if ev[0] == "done" else "error"
                if req.sink:
                    req.sink(ev)
        # the engine process ended (close, or a crash): nothing open may hang
        with self._send_lock:
            crashed = not self._closed
            self._closed = True
        code = self.proc.exitcode
        message = ("the engine is shutting down" if not crashed
                   else f"the engine process exited unexpectedly (exit code {code})")
        self._gone = message
        for rid in list(self._reqs):
            req = self._reqs.pop(rid)
            self._rid.pop(id(req), None)
            req.finish_reason = "error"
            if req.sink:
                req.sink(("error", message))


def engine_threads(threads: int | None = None) -> int:
    """torch threads for the engine: `serve.threads`, else $OMP_NUM_THREADS, else the physical cores."""
    if threads:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


# ---- the engine process -------------------------------------------------------------------------------
class _Outbox:
    """Events of the engine's requests, sent to the HTTP process in one message per scheduler step."""

    def __init__(self, conn, batcher):
        self.conn, self.batcher = conn, batcher
        self.events: list = []
        self.lock = threading.Lock()
        self.seq = 0  # the last request id received (the HTTP process counts the ones after it as waiting)

    def sink(self, rid: int, req: GenRequest):
        def put(ev):
            extra = ((req.text, list(req.tokens), req.cached_tokens, req.stop_token) if ev[0] in ("done", "error")
                     else None)
            with self.lock:
                self.events.append((rid, ev, extra))
        return put

    def flush(self) -> None:
        b = self.batcher
        pc = b.prefix_cache
        with self.lock:
            events, self.events = self.events, []
            stats = {"waiting": b.waiting, "running": b.running, "served": b.served, "cancelled": b.cancelled,
                     "errors": b.errors, "seq": self.seq, "prefix_cache": pc.stats() if pc is not None else None}
            self.conn.send(("events", events, stats))


def _engine_main(conn, load: dict, cfg: dict, threads: int | None) -> None:
    import torch

    from glmtune.config.sections import ServeSection
    from glmtune.serve.loading import load_served

    torch.set_num_threads(engine_threads(threads))
    cfg = ServeSection(**cfg)
    try:
        served = load_served(**load)
        # The HTTP process enforces serve.max_queue; the engine's own bound only backs it up.
        batcher = BatchingEngine(served.engine, cfg.max_batch_size, cfg.max_queue + cfg.max_batch_size + 16,
                                 cfg.prefix_cache_tokens)
    except BaseException as err:  # noqa: BLE001 - sent to the HTTP process, which raises it
        try:
            conn.send(("failed", err))
        except Exception:  # an exception that does not pickle
            conn.send(("failed", RuntimeError(f"{type(err).__name__}: {err}")))
        return
    out = _Outbox(conn, batcher)
    batcher.after_step = out.flush
    if cfg.adapt_threads and torch.get_num_threads() > 1:
        from glmtune.serve.threads import ThreadGovernor

        batcher.before_step = ThreadGovernor(torch.get_num_threads(), also_mine=(os.getppid(),)).step
    try:
        tokenizer, tokenizer_error = pickle.dumps(served.engine.tokenizer), None
    except Exception as err:  # the HTTP process falls back to one process
        tokenizer, tokenizer_error = None, f"{type(err).__name__}: {err}"
    conn.send(("ready", {"tokenizer": tokenizer, "tokenizer_error": tokenizer_error, "name": served.engine.name,
                         "names": served.names, "default": served.default, "threads": torch.get_num_threads()}))
    open_reqs: dict[int, GenRequest] = {}
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break  # the HTTP process is gone
            if msg[0] == "submit":
                _, rid, fields = msg
                req = GenRequest(**fields)
                req.sink = out.sink(rid, req)
                open_reqs[rid] = req
                try:
                    batcher.submit(req)
                except (QueueFull, EngineClosed) as err:
                    req.finish_reason = "error"
                    req.sink(("error", str(err)))
                out.seq = rid
                if req.finish_reason is not None:
                    out.flush()
            elif msg[0] == "cancel":
                req = open_reqs.get(msg[1])
                if req is not None and req.finish_reason is None:
                    batcher.cancel(req)  # a waiting one ends now (flushed here), a running one at the next step
                    out.flush()
            else:  # close
                break
            for rid in [r for r, q in open_reqs.items() if q.finish_reason is not None]:
                del open_reqs[rid]
    finally:
        batcher.close()
        try:
            out.flush()  # requests ended by the shutdown
        except OSError:
            pass
