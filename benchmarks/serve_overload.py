"""What a burst of simultaneous requests gets back from a running `glmtune serve`: status, body type, Retry-After.

Every request opens its own connection and all are sent at once, so the server sees N clients together.
Against the defaults (batch 16, queue 64) every answer should be 200, or a JSON 429/503 with Retry-After.

    glmtune serve --model tiny:glm4 --port 8000 &
    python benchmarks/serve_overload.py http://127.0.0.1:8000 --requests 384
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time


async def burst(url: str, n: int, max_tokens: int) -> dict:
    import httpx

    counts: collections.Counter = collections.Counter()

    async def one(i: int) -> None:
        body = {"messages": [{"role": "user", "content": f"你好 {i}"}], "max_tokens": max_tokens,
                "min_tokens": max_tokens}
        async with httpx.AsyncClient(timeout=300, trust_env=False) as client:
            try:
                r = await client.post(f"{url}/v1/chat/completions", json=body)
            except httpx.HTTPError as err:  # counted, not raised: the point is to see every outcome
                counts[type(err).__name__] += 1
                return
        kind = "json" if r.headers.get("content-type", "").startswith("application/json") else "text"
        counts[f"{r.status_code} {kind} retry-after={r.headers.get('retry-after')}"] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return {"requests": n, "seconds": round(time.perf_counter() - t0, 1), "answers": dict(counts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="server root, e.g. http://127.0.0.1:8000")
    ap.add_argument("--requests", type=int, default=384)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(burst(args.url.rstrip("/"), args.requests, args.max_tokens)), indent=2))


if __name__ == "__main__":
    main()
