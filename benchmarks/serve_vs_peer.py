"""glmtune serve vs LLaMA-Factory's `llamafactory-cli api` on identical work, alternating A B A B.

Both servers load the same model folder and answer the same requests from the same client: one
warm-up request, one timed lone request, then N concurrent chat completions (one thread each, started
together at a barrier; prompt i = system + user turns of record i), max_tokens 32, temperature 0.
That is the protocol of the shared peer harness's `api_bench.py`. Per run it records total wall
seconds, req/s, p50/p95 latency, prompt and completion tokens (so the work can be checked equal) and
the 1-minute load average before and after. Servers bind 127.0.0.1, are stopped by PID, and every
request has a timeout; the number of requests is fixed.

    python benchmarks/serve_vs_peer.py --model MODEL_DIR --data grading_messages.json \\
        --lf-venv LF_VENV --lf-config llamafactory_api.yaml --rounds 2 --out benchmarks/results

LLaMA-Factory runs with MAX_CONCURRENT=1 (its default: one request at a time) and 16 (threads, no
batching) unless --lf-concurrency says otherwise; its config's model_name_or_path is overridden with
--model. Runs wait (up to --wait-load seconds) for the load average to fall below --max-load.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile, as api_bench.py computes it."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def wait_quiet(max_load: float, wait_s: float, poll_s: float = 30.0) -> float:
    deadline = time.time() + wait_s
    while load1() > max_load and time.time() < deadline:
        print(f"  load {load1()} > {max_load}: waiting", flush=True)
        time.sleep(poll_s)
    return load1()


def load_prompts(path: str) -> list[list[dict]]:
    text = Path(path).read_text(encoding="utf-8").strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    return [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows]


def start_server(cmd: list[str], env: dict, port: int, log: Path, startup_s: float = 300.0):
    import httpx

    f = open(log, "w")
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < startup_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc, round(time.time() - t0, 1)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"server not up after {startup_s}s; see {log}")


def stop_server(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and any children it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def bench(base_url: str, prompts, n: int, max_tokens: int, timeout: float, model: str = "default") -> dict:
    """api_bench.py's protocol: warm-up, one lone request, then n concurrent requests released together."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="EMPTY", timeout=timeout, max_retries=0)

    def call(messages):
        t0 = time.perf_counter()
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        t1 = time.perf_counter()
        u = r.usage
        return t0, t1, u.prompt_tokens if u else None, u.completion_tokens if u else None, r.choices[0].message.content

    call(prompts[0])
    single = call(prompts[1 % len(prompts)])
    results, errors = [None] * n, [None] * n
    barrier = threading.Barrier(n)

    def worker(i):
        barrier.wait()
        try:
            results[i] = call(prompts[i % len(prompts)])
        except Exception as e:  # record and go on
            errors[i] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    wall = time.perf_counter() - t0
    ok = [r for r in results if r is not None]
    lat = [r[1] - r[0] for r in ok]
    return {"total_s": round(wall, 3), "ok": len(ok), "errors": [e for e in errors if e],
            "req_per_s": round(len(ok) / wall, 3), "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
            "latency_p95_s": round(pct(lat, 95), 3) if lat else None, "single_s": round(single[1] - single[0], 3),
            "prompt_tokens": sum(r[2] or 0 for r in ok), "completion_tokens": sum(r[3] or 0 for r in ok),
            "texts": [r[4] for r in results if r is not None]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model folder both servers load")
    ap.add_argument("--data", required=True, help="JSON/JSONL of {'messages': [...]} records")
    ap.add_argument("--lf-venv", required=True, help="virtual environment with llamafactory-cli")
    ap.add_argument("--lf-config", required=True, help="LLaMA-Factory api YAML (template, backend)")
    ap.add_argument("--lf-concurrency", default="1,16", help="MAX_CONCURRENT settings to run")
    ap.add_argument("--glmtune-set", action="append", default=[], metavar="serve.k=v",
                    help="extra overrides for glmtune serve (repeatable)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--wait-load", type=float, default=600.0)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    if not 1 <= args.n <= 64:
        raise SystemExit("--n must be within 1..64")

    prompts = load_prompts(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lf_cli = str(Path(args.lf_venv) / "bin" / "llamafactory-cli")
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "DISABLE_VERSION_CHECK": "1"}
    configs = [("glmtune", None)] + [(f"llamafactory MAX_CONCURRENT={c}", c) for c in args.lf_concurrency.split(",")]
    runs = []
    for rnd in range(args.rounds):
        for label, mc in configs:
            port = free_port()
            if mc is None:
                cmd = [sys.executable, "-m", "glmtune", "serve", "--model", args.model, "--host", "127.0.0.1",
                       "--port", str(port), "serve.max_prompt_tokens=32768", *args.glmtune_set]
                env = offline
            else:
                cmd = [lf_cli, "api", args.lf_config, f"model_name_or_path={args.model}"]
                env = {**offline, "API_HOST": "127.0.0.1", "API_PORT": str(port), "MAX_CONCURRENT": mc,
                       "PATH": f"{Path(args.lf_venv) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                       "VIRTUAL_ENV": args.lf_venv}
            log = out / f"server_{label.split()[0]}{'' if mc is None else '_mc' + mc}_r{rnd}.log"
            before = wait_quiet(args.max_load, args.wait_load)
            print(f"round {rnd} {label}: starting (load {before})", flush=True)
            proc, up_s = start_server(cmd, env, port, log)
            try:
                res = bench(f"http://127.0.0.1:{port}/v1", prompts, args.n, args.max_tokens, args.timeout)
            finally:
                stop_server(proc)
            res.update(label=label, round=rnd, startup_s=up_s, load_before=before, load_after=load1())
            runs.append(res)
            print(f"  total {res['total_s']} s, {res['req_per_s']} req/s, p50 {res['latency_p50_s']} s, "
                  f"p95 {res['latency_p95_s']} s, lone {res['single_s']} s, tokens {res['prompt_tokens']}+"
                  f"{res['completion_tokens']}, errors {len(res['errors'])}, load {before} -> {res['load_after']}",
                  flush=True)

    print(f"\n{'server':<30} {'round':>5} {'total s':>8} {'req/s':>6} {'p50 s':>6} {'p95 s':>6} {'lone s':>6} "
          f"{'prompt+compl tok':>17} {'load before/after':>18}")
    for r in runs:
        print(f"{r['label']:<30} {r['round']:>5} {r['total_s']:>8.2f} {r['req_per_s']:>6.2f} {r['latency_p50_s']:>6.2f} "
              f"{r['latency_p95_s']:>6.2f} {r['single_s']:>6.2f} {str(r['prompt_tokens']) + '+' + str(r['completion_tokens']):>17} "
              f"{str(r['load_before']) + ' / ' + str(r['load_after']):>18}")
    med = {label: statistics.median(r["total_s"] for r in runs if r["label"] == label) for label, _ in configs}
    ratios = {label: round(med[label] / med["glmtune"], 2) for label, _ in configs if label != "glmtune"}
    for label, x in ratios.items():
        print(f"glmtune throughput vs {label}: {x}x (median total {med['glmtune']:.2f} s vs {med[label]:.2f} s)")
    same = {r["label"]: (r["prompt_tokens"], r["completion_tokens"]) for r in runs}
    print("work per server (prompt, completion tokens):", same)
    ref = next(r["texts"] for r in runs if r["label"] == "glmtune")
    for r in runs:
        r["answers_equal_to_glmtune"] = sum(a.strip() == b.strip() for a, b in zip(r["texts"], ref))
    print("answers equal to glmtune's (of %d):" % args.n, {r["label"]: r["answers_equal_to_glmtune"] for r in runs})
    record = {"model": args.model, "data": args.data, "n": args.n, "max_tokens": args.max_tokens,
              "runs": runs, "median_total_s": med, "throughput_ratio_vs": ratios,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = out / "serve_vs_peer.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
