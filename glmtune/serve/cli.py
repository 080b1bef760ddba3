"""`glmtune serve --run RUN | --model DIR [--adapter name=RUN ...] [--backend hf|vllm] [serve.k=v ...]`

OpenAI-compatible API with continuous batching on the transformers backend:

    glmtune serve --run runs/demo serve.port=8000 serve.max_batch_size=16
    glmtune serve --model runs/demo/export --adapter style=runs/style serve.api_key=secret
    curl -s 127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{"model":"demo","messages":[{"role":"user","content":"你好"}]}'
"""

from __future__ import annotations

import argparse

HELP = "Serve a run or model folder over an OpenAI-compatible HTTP API (batched, multi-adapter)."


def parse_adapters(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            from glmtune.errors import InputError

            raise InputError(f"--adapter {item!r}: expected NAME=RUN_OR_ADAPTER_DIR")
        out[name] = path
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from glmtune.config.cli import add_config_args, add_source_args

    add_source_args(parser)
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="extra LoRA adapter (run or adapter folder) selectable by `model`; repeatable")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                        help="hf: built-in batching engine; vllm: vLLM's own server from .venv-vllm (`make vllm`), "
                             "on the run's export or its base + LoRA")
    parser.add_argument("--host", help="bind address (serve.host; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (serve.port)")
    add_config_args(parser)


FLAGS = {"host": "serve.host", "port": "serve.port"}


def serve_config(args):
    """The serve section: the run's config.yaml, then the config file, then overrides, then --host/--port."""
    from glmtune.config.cli import config_from_args

    return config_from_args(args, FLAGS).serve


def run(args) -> int:
    import os

    cfg = serve_config(args)
    adapters = {**cfg.adapters, **parse_adapters(args.adapter)}
    if args.backend == "vllm":
        from glmtune.serve.vllm import launch

        return launch(args.run, args.model, cfg, adapters)
    # Before torch loads OpenMP (if nothing loaded it yet): threads that spin at every barrier waste the cores
    # they share with HTTP and other jobs (figures in serve/engine_process.py). A value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import uvicorn

    from glmtune.serve.api import create_app
    from glmtune.serve.loading import load_served

    batcher = None
    if cfg.engine_process:  # the engine in its own process: no GIL shared with HTTP (serve/engine_process.py)
        from glmtune.serve.engine_process import EngineProcess, EngineProcessUnavailable

        try:
            batcher = EngineProcess(dict(run=args.run, model=args.model, adapters=adapters,
                                         packed_linear=cfg.packed_linear), cfg, cfg.threads)
            served, threads = batcher.served_models(), batcher.threads
        except EngineProcessUnavailable as err:
            print(f"note: {err}; the engine runs in the HTTP process instead (serve.engine_process=false)")
    if batcher is None:
        import torch

        from glmtune.serve.engine_process import engine_threads

        torch.set_num_threads(engine_threads(cfg.threads))
        served, threads = (load_served(run=args.run, model=args.model, adapters=adapters, packed_linear=cfg.packed_linear),
                           torch.get_num_threads())
    app = create_app(served, cfg, batcher=batcher)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {cfg.host}: the API is reachable from other machines"
              + ("" if cfg.api_key else " and has no serve.api_key"))
    print(f"serving {sorted(served.names)} on http://{cfg.host}:{cfg.port}/v1 "
          f"(batch {cfg.max_batch_size}, queue {cfg.max_queue}, {threads} torch thread{'s' * (threads != 1)}"
          f"{', engine process' if batcher is not None else ''})", flush=True)
    # No uvicorn limit_concurrency: it answers a plain-text 503 without Retry-After (and counts idle
    # keep-alive connections); the app's own ConcurrencyLimit answers overload in OpenAI's JSON shape.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    return 0
