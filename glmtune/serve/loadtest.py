"""`glmtune bench serve URL --concurrency 1,4,16 --requests N [--max-tokens 32] [--out DIR]`

Answers "how many concurrent users" with numbers: for each concurrency level, N chat requests are
sent by that many concurrent async clients (httpx) and it reports req/s, output tokens/s, latency
p50/p95/p99 and errors, writes `loadtest.json` and a PNG of throughput and latency vs concurrency.
Loopback targets only; the request count and every request's time are bounded.

    glmtune serve --run runs/demo &
    glmtune bench serve http://127.0.0.1:8000/v1 --concurrency 1,4,16 --requests 32 --out bench/
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import time
from pathlib import Path
from urllib.parse import urlparse

from glmtune.errors import InputError

HELP = "Load-test an OpenAI-compatible server: req/s, tokens/s, latency percentiles vs concurrency."

DEFAULT_PROMPTS = [
    "你好，请介绍一下你自己。", "用一句话解释什么是微调。", "Write a haiku about autumn.",
    "俗话说，好的开始是成功的一半。请评价这句话。", "List three uses of LoRA.", "今天天气怎么样？",
]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), as the shared API benchmark computes it."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        loopback = False
    if not loopback:
        raise InputError(f"refusing non-loopback target {host!r}: the load test only runs against 127.0.0.1")


def load_prompts(path: str | None) -> list[list[dict]]:
    if not path:
        return [[{"role": "user", "content": p}] for p in DEFAULT_PROMPTS]
    text = Path(path).read_text(encoding="utf-8").strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    return [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows]


async def run_level(base_url: str, concurrency: int, n: int, prompts, max_tokens: int, model: str,
                    api_key: str | None, timeout: float) -> dict:
    import asyncio

    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    latencies, tokens, errors = [], [], []

    async def worker(client):
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = {"model": model, "messages": prompts[i % len(prompts)], "max_tokens": max_tokens, "temperature": 0}
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{base_url}/chat/completions", json=body, headers=headers)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:120]}")
                    continue
                latencies.append(time.perf_counter() - t0)
                tokens.append(r.json()["usage"]["completion_tokens"])
            except Exception as err:  # count and go on: one failure must not stop the measurement
                errors.append(f"{type(err).__name__}: {err}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency, "requests": n, "ok": len(latencies), "errors": len(errors),
        "error_samples": errors[:5], "wall_s": round(wall, 4),
        "req_per_s": round(len(latencies) / wall, 4), "output_tokens_per_s": round(sum(tokens) / wall, 3),
        "output_tokens": sum(tokens),
        **{f"latency_p{q}_s": (round(percentile(latencies, q), 4) if latencies else None) for q in (50, 95, 99)},
    }


def plot(levels: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [lv["concurrency"] for lv in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(c, [lv["req_per_s"] for lv in levels], "o-", label="req/s")
    a2 = a.twinx()
    a2.plot(c, [lv["output_tokens_per_s"] for lv in levels], "s--", color="tab:orange", label="output tok/s")
    a.set(xlabel="concurrent clients", ylabel="requests / s", title="throughput")
    a2.set_ylabel("output tokens / s")
    for q, style in ((50, "o-"), (95, "s--"), (99, "^:")):
        b.plot(c, [lv[f"latency_p{q}_s"] or 0 for lv in levels], style, label=f"p{q}")
    b.set(xlabel="concurrent clients", ylabel="seconds", title="latency")
    b.legend()
    for ax in (a, b):
        ax.set_xscale("log", base=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bench_serve(base_url: str, concurrency: list[int], requests: int, max_tokens: int = 32, model: str = "default",
                api_key: str | None = None, prompts=None, timeout: float = 120.0, out_dir: str | None = None,
                warmup: bool = True) -> dict:
    import asyncio

    check_loopback(base_url)
    base_url = base_url.rstrip("/")
    if not base_url.endswith("/v1"):
        base_url += "/v1"
    if not (1 <= requests <= 10_000) or not all(1 <= c <= 512 for c in concurrency):
        raise InputError("--requests must be within 1..10000 and each concurrency within 1..512")
    prompts = prompts or load_prompts(None)
    if warmup:
        asyncio.run(run_level(base_url, 1, 1, prompts, max_tokens, model, api_key, timeout))
    levels = [asyncio.run(run_level(base_url, c, requests, prompts, max_tokens, model, api_key, timeout))
              for c in concurrency]
    result = {"url": base_url, "model": model, "max_tokens": max_tokens, "levels": levels}
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "loadtest.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        plot(levels, out / "loadtest.png")
        result["files"] = [str(out / "loadtest.json"), str(out / "loadtest.png")]
    return result


def table(levels: list[dict]) -> str:
    head = f"{'clients':>7} {'req/s':>8} {'tok/s':>9} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'errors':>6}"
    rows = [f"{lv['concurrency']:>7} {lv['req_per_s']:>8.2f} {lv['output_tokens_per_s']:>9.1f} "
            f"{lv['latency_p50_s'] or 0:>7.3f} {lv['latency_p95_s'] or 0:>7.3f} {lv['latency_p99_s'] or 0:>7.3f} "
            f"{lv['errors']:>6}" for lv in levels]
    return "\n".join([head, *rows])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=["serve"], help="what to benchmark (serve: an OpenAI-compatible API)")
    parser.add_argument("url", help="base URL, e.g. http://127.0.0.1:8000/v1 (loopback only)")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default="default")
    parser.add_argument("--api-key", help="the server's key (serve.api_key)")
    parser.add_argument("--data", help="JSON/JSONL of {'messages': [...]} records to use as prompts")
    parser.add_argument("--timeout", type=float, help="seconds per request (serve.request_timeout_s, default 120)")
    parser.add_argument("--out", help="folder for loadtest.json and loadtest.png")
    from glmtune.config.cli import add_config_args

    add_config_args(parser)


# bench talks to a server started with the same config: its key and its per-request time limit
FLAGS = {"api_key": "serve.api_key", "timeout": "serve.request_timeout_s"}


def run(args) -> int:
    from glmtune.config.cli import config_from_args

    cfg = config_from_args(args, FLAGS).serve
    conc = [int(x) for x in args.concurrency.split(",") if x.strip()]
    result = bench_serve(args.url, conc, args.requests, args.max_tokens, args.model, cfg.api_key,
                         load_prompts(args.data), cfg.request_timeout_s, args.out)
    print(table(result["levels"]))
    if args.out:
        print(f"wrote {args.out}/loadtest.json and loadtest.png")
    return 0 if all(lv["errors"] == 0 for lv in result["levels"]) else 1
