"""Predictions/s of `glmtune eval`'s generation loop, one prompt at a time vs batched, in one process.

    python benchmarks/eval_batching.py                        # tiny:glm4 on CPU, 32 prompts
    python benchmarks/eval_batching.py --model tiny:glm4 --n 64 --batch-sizes 1 8 32 --json out.json

Each setting runs the real path (`generate_predictions` with an `HFEngine`, predictions written and
fsync-ed to a fresh JSONL), after one warm-up batch; the fastest of --repeats runs is kept. Greedy decoding with a fixed max_new_tokens;
generated tokens are counted too, because a batch runs until its longest answer stops.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path


def prompts(n: int) -> list:
    from glmtune.evaluate.generate import EvalItem

    # Varied lengths, like a real test split (system rubric + per-sample evidence).
    return [EvalItem(f"b{i}", f"bench:{i}", [{"role": "system", "content": "你是朗读评分员。按语速、停顿、声母、韵母、声调打分。"},
                                             {"role": "user", "content": f"第{i}段：" + "学生朗读了课文，" * (1 + i % 7)}],
                     "语速:3;停顿:3;声母:3;韵母:3;声调:3;完整度:5;评语:好") for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny:glm4")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest is kept (least noise)")
    ap.add_argument("--json", default="benchmarks/results/eval_batching.json")
    args = ap.parse_args()

    import torch

    from glmtune.evaluate.generate import generate_predictions
    from glmtune.inference.engine import HFEngine

    engine = HFEngine.from_model_dir(args.model)
    items = prompts(args.n)
    engine.generate([it.prompt for it in items[:4]], max_new_tokens=4)  # warm-up
    results = []
    for bs in args.batch_sizes:
        best = None
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                res = generate_predictions(engine, items, Path(tmp) / "predictions.jsonl", batch_size=bs,
                                           max_new_tokens=args.max_new_tokens)
                wall = time.perf_counter() - t0
            best = wall if best is None else min(best, wall)
        toks = sum(r["completion_tokens"] for r in res["rows"])
        results.append({"batch_size": bs, "predictions": len(res["rows"]), "seconds": round(best, 3),
                        "predictions_per_s": round(len(res["rows"]) / best, 2),
                        "generated_tokens_per_s": round(toks / best, 1)})
    base = results[0]["predictions_per_s"]
    for r in results:
        r["speedup_vs_first"] = round(r["predictions_per_s"] / base, 2)

    print(f"model {args.model}, {args.n} prompts, max_new_tokens {args.max_new_tokens}, device {engine.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'batch':>5} {'seconds':>8} {'pred/s':>8} {'tok/s':>8} {'speedup':>8}")
    for r in results:
        print(f"{r['batch_size']:>5} {r['seconds']:>8.2f} {r['predictions_per_s']:>8.2f} "
              f"{r['generated_tokens_per_s']:>8.1f} {r['speedup_vs_first']:>7.2f}x")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "n": args.n, "max_new_tokens": args.max_new_tokens,
                               "device": str(engine.device), "torch_threads": torch.get_num_threads(),
                               "machine": platform.machine(), "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
