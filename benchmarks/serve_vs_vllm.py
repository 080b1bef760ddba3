"""glmtune's serving engine vs vLLM on the same model folder, same prompts, same client, alternating.

Both servers are started the way a user starts them (`glmtune serve --model M` and
`glmtune serve --backend vllm --model M`, both on 127.0.0.1, batch 16) and stay up; for every
concurrency level (1, 4, 16 clients) the two are measured back to back, the order swapped each round, each
level once both servers are idle (`settle`).
Each client streams its answers (SSE, `stream_options.include_usage`), so the script records req/s, output
tokens/s, latency p50/p95 and time to first token (TTFT) p50/p95; greedy (temperature 0) with a fixed
max_tokens. vLLM gets glmtune's own rendered prompt ids (`chat_ids`, the model's chat template) on
`/completions` (`--vllm-prompt ids`, the default), and the warm-up prompts' ids vLLM reports back
(`return_token_ids`) are checked equal, so both engines compute on the same tokens; `--vllm-prompt chat`
lets vLLM render the template itself. Both servers are asked for the ids they compute on and generate
(`return_token_ids`, vLLM's extension, which glmtune serves too), and the answers of the two engines are compared
token for token and as text (vLLM keeps the newline GLM emits after <|assistant|>, glmtune's engine drops it:
texts are compared without it). Where the tokens are equal and the texts are not, the table says how many of those
texts are vLLM's a prefix of glmtune's: vLLM's detokenizer holds back text whose decoding ends in an incomplete
UTF-8 character and does not send it when the answer ends; glmtune sends it and drops only the incomplete
character itself, as `tokenizer.decode(...).rstrip("\ufffd")`.

Workloads:
  tiny     the built-in short chat prompts (`glmtune bench`'s defaults)
  grading  the oral-reading grading prompts: the long rubric system prompt shared by every request plus a
           long per-sample ISE record (`oral` task, raw mode); glmtune's prefix cache vs vLLM's automatic
           prefix caching (both on by default)

    glmtune demo && glmtune export --run runs/demo              # a tiny model that answers in the grading format
    python benchmarks/serve_vs_vllm.py --model runs/demo/export --requests 48 --grading-requests 16

Needs `make vllm`. The 1-minute load average is recorded before and after each measurement. `--busy N` runs N
busy-loop processes for the whole benchmark, a reproducible stand-in for the other jobs of a shared machine (these
2-core machines often have one core busy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    from glmtune.serve.loadtest import percentile

    return percentile(values, q)


class Server:
    def __init__(self, label: str, args: list[str], log: Path, env: dict, startup_s: float = 600,
                 render=None):
        import httpx

        self.label, self.port = label, free_port()
        self.render = render  # conversations -> glmtune's prompt ids (sent to /completions); None: chat messages
        self.proc = subprocess.Popen([sys.executable, "-m", "glmtune", "serve", *args, "--port", str(self.port)],
                                     env={**os.environ, **env}, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        t0 = time.time()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{label} exited {self.proc.returncode}; see {log}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() - t0 > startup_s:
                self.stop()
                raise RuntimeError(f"{label} not up after {startup_s} s; see {log}")
            time.sleep(1)
        self.startup_s = round(time.time() - t0, 1)
        self.model = httpx.get(f"{self.url}/models", trust_env=False).json()["data"][0]["id"]

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the server's processes (vLLM: API server, engine core,
        worker), a measure of work that the other jobs on a shared machine do not inflate."""
        import psutil

        total = 0.0
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return float("nan")
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def one(client, url: str, model: str, prompt: list, max_tokens: int) -> dict:
    """One streamed request: chat messages to `/chat/completions`, or token ids (glmtune's rendering) to
    `/completions`."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "return_token_ids": True}
    ids = bool(prompt) and isinstance(prompt[0], int)
    body.update({"prompt": prompt} if ids else {"messages": prompt})
    t0 = time.perf_counter()
    ttft, text, usage, token_ids = None, [], None, []
    async with client.stream("POST", f"{url}/{'completions' if ids else 'chat/completions'}", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                token_ids += choice.get("token_ids") or []
                piece = choice.get("text") if ids else (choice.get("delta") or {}).get("content")
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    text.append(piece)
    if usage is None:
        raise RuntimeError("no usage in the stream")
    if len(token_ids) != usage["completion_tokens"]:
        raise RuntimeError(f"{len(token_ids)} token ids streamed, usage says {usage['completion_tokens']}")
    return {"latency": time.perf_counter() - t0, "ttft": ttft, "tokens": usage["completion_tokens"],
            "text": "".join(text), "ids": token_ids}


def vllm_binding(log: Path) -> str:
    """vLLM-CPU's thread binding, as its log states it (`OpenMP thread binding info`)."""
    import re

    text = log.read_text(errors="replace")
    cores = re.findall(r"local_rank=\d+, core ids=(\[[^\]]*\])", text)
    reserved = re.findall(r"reserved_cpus=(\[[^\]]*\])", text)
    if not cores:
        return "binding not found in its log"
    return (f"worker compute threads on cores {', '.join(cores)}, cores {reserved[-1] if reserved else '[]'} "
            f"kept for its API server and engine core")


def settle(servers: list, quiet: float = 0.1, most_s: float = 10.0) -> float:
    """Wait until no server uses more than `quiet` cores (vLLM's engine core and worker keep about one core busy
    for a second after a level, longer than a tiny level lasts, which the engine measured next would pay for).
    Returns the seconds waited."""
    t0 = time.time()
    while time.time() - t0 < most_s:
        c0 = [s.cpu_s() for s in servers]
        time.sleep(0.25)
        if sum(s.cpu_s() - c for s, c in zip(servers, c0)) / 0.25 < quiet:
            break
    return round(time.time() - t0, 2)


def check_ids(server: "Server", prompts: list, rendered: list[list[int]]) -> int:
    """Each server reports the prompt ids it computed on (`return_token_ids`): vLLM those it was sent, glmtune
    those it rendered from the chat messages. They must be the ids glmtune's `chat_ids` renders, exactly.
    Returns how many prompts were checked; raises on the first difference."""
    import httpx

    for i, (prompt, ids) in enumerate(zip(prompts, rendered, strict=True)):
        chat = not isinstance(prompt[0], int)
        r = httpx.post(f"{server.url}/{'chat/completions' if chat else 'completions'}",
                       json={"model": server.model, "max_tokens": 1, "temperature": 0, "return_token_ids": True,
                             **({"messages": prompt} if chat else {"prompt": prompt})},
                       timeout=600, trust_env=False)
        r.raise_for_status()
        got = r.json().get("prompt_token_ids") if chat else r.json()["choices"][0].get("prompt_token_ids")
        if got != ids:
            raise RuntimeError(f"prompt {i}: {server.label} computed on other ids than glmtune's chat_ids renders "
                               f"({len(got or [])} vs {len(ids)} tokens)")
    return len(prompts)


async def level(server: Server, prompts: list, clients: int, n: int, max_tokens: int) -> dict:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    results: dict[int, dict] = {}
    errors: list[str] = []

    async def worker(client):
        while not queue.empty():
            i = queue.get_nowait()
            try:
                results[i] = await one(client, server.url, server.model, prompts[i % len(prompts)], max_tokens)
            except Exception as err:  # counted and reported, never dropped
                errors.append(f"{type(err).__name__}: {err}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = [r["latency"] for r in results.values()]
    ttft = [r["ttft"] for r in results.values() if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in results.values())
    return {"clients": clients, "requests": n, "ok": len(results), "errors": len(errors), "error_samples": errors[:3],
            "wall_s": round(wall, 3), "req_per_s": round(len(results) / wall, 2),
            "output_tokens_per_s": round(tokens / wall, 1), "output_tokens": tokens,
            "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95),
            "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95),
            "texts": {i: results[i]["text"] for i in sorted(results) if i < len(prompts)},
            "ids": {i: results[i]["ids"] for i in sorted(results) if i < len(prompts)}}


def workload_prompts(name: str, n: int, seed: int = 0) -> list[list[dict]]:
    """The grading prompts of each level are new samples (`seed`): a grading service sees every sample once,
    and a repeated prompt would only measure vLLM's whole-prompt cache hits. The rubric is always shared."""
    if name == "tiny":
        from glmtune.serve.loadtest import load_prompts

        return load_prompts(None)
    from glmtune.tasks.oral_reading.build import build_sample
    from glmtune.tasks.oral_reading.demo_data import demo_items

    return [[m for m in build_sample(item, "raw", "rubric")["messages"] if m["role"] != "assistant"]
            for item in demo_items(n, seed=1000 + seed)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny:glm4")
    ap.add_argument("--workloads", default="tiny,grading")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", type=int, default=48, help="requests per level and engine (tiny workload)")
    ap.add_argument("--grading-requests", type=int, default=16, help="the same for the grading workload")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per level (order swapped each)")
    ap.add_argument("--vllm-prompt", choices=("ids", "chat"), default="ids",
                    help="ids: vLLM gets glmtune's rendered prompt ids on /completions (the same tokens, checked); "
                         "chat: vLLM renders the chat template itself")
    ap.add_argument("--threads", type=int, default=None,
                    help="glmtune's serve.threads (default: the physical cores, as `glmtune serve` without "
                         "$OMP_NUM_THREADS); vLLM binds its own (VLLM_CPU_OMP_THREADS_BIND=auto), read from its log")
    ap.add_argument("--busy", type=int, default=0,
                    help="busy-loop processes kept running throughout (a machine whose cores are shared)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    common = ["serve.max_batch_size=16", "serve.max_queue=256", "serve.max_prompt_tokens=7000",
              f"serve.max_new_tokens={max(args.max_tokens, 64)}"]
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    import psutil

    threads = args.threads or psutil.cpu_count(logical=False) or 1
    servers = []
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        servers.append(Server("glmtune", ["--model", args.model, *common, f"serve.threads={threads}"],
                              out / "serve_vs_vllm.glmtune.log", env))
        from glmtune.models.load import load_tokenizer, resolve_path
        from glmtune.serve.vllm import prompt_token_ids

        tokenizer = load_tokenizer(resolve_path(args.model))  # the model folder's, as `glmtune serve` loads it

        def render(conversations):
            return prompt_token_ids(tokenizer, conversations)
        servers.append(Server("vllm", ["--backend", "vllm", "--model", args.model, *common],
                              out / "serve_vs_vllm.vllm.log", env,
                              render=render if args.vllm_prompt == "ids" else None))
        budget = {"glmtune": f"{threads} torch thread(s) in its engine process (serve.threads), HTTP in another",
                  "vllm": vllm_binding(out / "serve_vs_vllm.vllm.log")}
        print(f"start-up: glmtune {servers[0].startup_s} s, vLLM {servers[1].startup_s} s; "
              f"{os.cpu_count()} CPUs; glmtune: {budget['glmtune']}; vLLM: {budget['vllm']}", flush=True)
        record = {"model": args.model, "max_tokens": args.max_tokens, "requests": args.requests, "rounds": args.rounds,
                  "cpus": os.cpu_count(), "thread_budget": budget, "startup_s": {s.label: s.startup_s for s in servers},
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "vllm_prompt": args.vllm_prompt, "busy": args.busy,
                  "workloads": {}}
        for wl in args.workloads.split(","):
            n = args.grading_requests if wl == "grading" else args.requests
            warm = workload_prompts(wl, 4, seed=999)
            checked = 0
            for s in servers:  # warm-up: start-up costs, and both prefix caches see the shared system prompt once
                checked += check_ids(s, s.render(warm) if s.render else warm, render(warm))
                asyncio.run(level(s, s.render(warm) if s.render else warm, 2, 4, args.max_tokens))
            rows = []
            for li, c in enumerate(levels):
                for rnd in range(args.rounds):
                    prompts = workload_prompts(wl, n, seed=li * args.rounds + rnd)
                    rendered = render(prompts)  # outside the timed part
                    for s in (servers if rnd % 2 == 0 else servers[::-1]):
                        settled = settle(servers)
                        load0, cpu0 = round(os.getloadavg()[0], 2), s.cpu_s()
                        r = asyncio.run(level(s, rendered if s.render else prompts, c, n, args.max_tokens))
                        r.update(engine=s.label, round=rnd, settle_s=settled, load_before=load0, load_after=round(os.getloadavg()[0], 2),
                                 server_cpu_s=round(s.cpu_s() - cpu0, 2))
                        rows.append(r)
                        print(f"{wl:<8} {s.label:<8} c{c:<3} {r['req_per_s']:>7.2f} req/s {r['output_tokens_per_s']:>8.1f} "
                              f"tok/s p50 {r['latency_p50_s'] or 0:.3f} p95 {r['latency_p95_s'] or 0:.3f} "
                              f"TTFT p50 {r['ttft_p50_s'] or 0:.3f} server CPU {r['server_cpu_s']:.1f} s "
                              f"errors {r['errors']} {r['error_samples'][:1]} "
                              f"load {load0}", flush=True)
            record["workloads"][wl] = {"prompts": len(prompts), "rows": rows, **compare(rows),
                                       "prompt_ids_checked_equal": checked}
    finally:
        for s in servers:
            s.stop()
        for p in busy:
            p.kill()
    print()
    print(table(record))
    (out / "serve_vs_vllm.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out / 'serve_vs_vllm.json'}")


def compare(rows: list[dict]) -> dict:
    """The two engines' answers to the same prompts (same level, same round), token for token and as text.
    `text_prefix`: answers with equal tokens whose vLLM text is a prefix of glmtune's (vLLM's detokenizer does not
    send a held-back tail that decodes to an incomplete character); `differ_samples`: a few answers that differ."""
    n = tokens = texts = prefix = 0
    samples = []
    for g in (r for r in rows if r["engine"] == "glmtune"):
        v = next(r for r in rows if r["engine"] == "vllm" and (r["clients"], r["round"]) == (g["clients"], g["round"]))
        for i in g["ids"].keys() & v["ids"].keys():
            same_ids, vt, gt = g["ids"][i] == v["ids"][i], v["texts"][i].lstrip("\n"), g["texts"][i]
            n, tokens, texts = n + 1, tokens + same_ids, texts + (vt == gt)
            if same_ids and vt != gt and gt.startswith(vt):
                prefix += 1
            if (not same_ids or vt != gt) and len(samples) < 4:
                samples.append({"clients": g["clients"], "round": g["round"], "prompt": i, "glmtune": gt, "vllm": vt,
                                "tokens_equal": same_ids, "glmtune_ids": g["ids"][i], "vllm_ids": v["ids"][i]})
    return {"answers": n, "tokens_equal": tokens, "texts_equal": texts, "text_prefix": prefix,
            "differ_samples": samples}


def table(record: dict) -> str:
    lines = ["| workload | clients | glmtune req/s | vLLM req/s | ratio | glmtune tok/s | vLLM tok/s | "
             "glmtune p50 / p95 s | vLLM p50 / p95 s | glmtune TTFT p50 s | vLLM TTFT p50 s | "
             "glmtune CPU s / req | vLLM CPU s / req |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for wl, w in record["workloads"].items():
        for c in sorted({r["clients"] for r in w["rows"]}):
            def avg(engine, key):
                vals = [r[key] for r in w["rows"] if r["engine"] == engine and r["clients"] == c and r[key] is not None]
                return sum(vals) / len(vals) if vals else float("nan")

            def n(c):
                return next(r["requests"] for r in w["rows"] if r["clients"] == c)

            g, v = avg("glmtune", "req_per_s"), avg("vllm", "req_per_s")
            lines.append(f"| {wl} | {c} | {g:.2f} | {v:.2f} | **{g / v:.2f}×** | {avg('glmtune', 'output_tokens_per_s'):.0f} | "
                         f"{avg('vllm', 'output_tokens_per_s'):.0f} | {avg('glmtune', 'latency_p50_s'):.3f} / "
                         f"{avg('glmtune', 'latency_p95_s'):.3f} | {avg('vllm', 'latency_p50_s'):.3f} / "
                         f"{avg('vllm', 'latency_p95_s'):.3f} | {avg('glmtune', 'ttft_p50_s'):.3f} | "
                         f"{avg('vllm', 'ttft_p50_s'):.3f} | {avg('glmtune', 'server_cpu_s') / n(c):.3f} | "
                         f"{avg('vllm', 'server_cpu_s') / n(c):.3f} |")
        lines.append(f"| {wl} | answers: tokens equal {w['tokens_equal']} of {w['answers']}, texts equal "
                     f"{w['texts_equal']} (of the others, {w['text_prefix']} with equal tokens and vLLM's text a "
                     f"prefix of glmtune's) | | | | | | | | | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
