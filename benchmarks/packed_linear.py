"""`serve.packed_linear` on a real model: decode-step time of the batching engine at batch 1/4/16, with the Linear
weights unpacked (F.linear -> MKL) and packed once for oneDNN (glmtune.inference.packed), one thread; and whether
greedy decoding of the 6 built-in load-test prompts gives the same tokens both ways.

    OMP_NUM_THREADS=1 python benchmarks/packed_linear.py --model /root/.cache/glmtune/gguf/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f

Each figure is the median of `--rounds` rounds of `--steps` decode steps (after 3 warm-up steps), in ms per step.
The two models are timed alternately, round by round, so a change of machine load hits both alike.
"""

import argparse
import json
import statistics
import time

import torch


def step_ms(engine, prompts, batch: int, steps: int) -> list[float]:
    from glmtune.inference.batching import BatchingEngine, GenRequest

    be = BatchingEngine(engine, 16, 256, 0)
    be.close()  # its scheduler thread stops; steps are driven by hand below
    reqs = [GenRequest(prompt_ids=engine.prompt_ids(prompts[i % len(prompts)]), max_new_tokens=steps + 8,
                       min_tokens=steps + 8) for i in range(batch)]
    with torch.inference_mode():
        for r in reqs:
            be._prefill([r])
        for _ in range(3):
            be._decode_step()
        t = time.perf_counter()
        for _ in range(steps - 3):
            be._decode_step()
        return (time.perf_counter() - t) / (steps - 3) * 1000


def greedy(engine, prompts, n: int) -> list[list[int]]:
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([engine.prompt_ids(p)])
            g = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                      do_sample=False, min_new_tokens=n)
            out.append(g[0, ids.shape[1]:].tolist())
    return out


def main():
    from glmtune.serve.loading import load_served
    from glmtune.serve.loadtest import load_prompts

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--steps", type=int, default=13)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    prompts = load_prompts(None)
    plain = load_served(model=args.model).engine
    packed = load_served(model=args.model, packed_linear=True).engine
    res = {"model": args.model, "threads": torch.get_num_threads(), "step_ms": {}}
    for b in map(int, args.batches.split(",")):
        times = {"unpacked": [], "packed": []}
        for _ in range(args.rounds):
            times["unpacked"].append(step_ms(plain, prompts, b, args.steps))
            times["packed"].append(step_ms(packed, prompts, b, args.steps))
        med = {k: round(statistics.median(v), 1) for k, v in times.items()}
        res["step_ms"][b] = med
        print(f"batch {b:2d}: unpacked {med['unpacked']:6.1f} ms/step, packed {med['packed']:6.1f} ms/step "
              f"({med['unpacked'] / med['packed']:.2f}x)", flush=True)
    a, p = greedy(plain, prompts, args.tokens), greedy(packed, prompts, args.tokens)
    same = [x == y for x, y in zip(a, p)]
    first = [next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), None) for x, y in zip(a, p)]
    res["greedy_same"] = same
    res["first_difference"] = first
    print(f"greedy {args.tokens} tokens, {len(prompts)} prompts: {sum(same)}/{len(same)} identical packed vs unpacked"
          + ("" if all(same) else f" (first differing token per prompt: {first})"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
