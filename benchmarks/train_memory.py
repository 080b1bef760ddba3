"""Peak memory and tokens/s of one training step: lean (chunked, supervised-only) loss vs the plain loss, and
padding reduction (length grouping, packing) vs random batches of mixed lengths.

Model: GLM-4 architecture with the real GLM-4 vocabulary (151,552), hidden 256, 2 layers, random weights,
all parameters trainable; samples are random token ids (no tokenizer needed): 4k tokens with a ~200-token
supervised answer for the loss pair, lengths 512-4096 for the padding pair. Every variant runs in a fresh
subprocess; peak memory is the growth of the process's peak RSS (ru_maxrss) over the RSS after setup, so
only the forward/backward of the step counts (weights and the batch are outside; no optimizer update,
which is the same for both losses).

    python benchmarks/train_memory.py --out runs/bench/train_memory.json
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

VOCAB = 151_552
SEQ = 4096
ANSWER = 200


def build_model():
    import torch
    from transformers import Glm4Config, Glm4ForCausalLM

    torch.manual_seed(0)
    cfg = Glm4Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
                     tie_word_embeddings=False)
    return Glm4ForCausalLM(cfg).train()


def loss_batch(n: int):
    rng = random.Random(0)
    feats = []
    for _ in range(n):
        ids = [rng.randrange(100, VOCAB) for _ in range(SEQ)]
        feats.append({"input_ids": ids, "labels": [-100] * (SEQ - ANSWER) + ids[-ANSWER:]})
    return feats


def mixed_samples(n: int = 16):
    rng = random.Random(1)
    feats = []
    for _ in range(n):
        k = rng.randrange(512, SEQ + 1)
        ids = [rng.randrange(100, VOCAB) for _ in range(k)]
        feats.append({"input_ids": ids, "labels": [-100] * (k - ANSWER) + ids[-ANSWER:]})
    return feats


def batches(variant: str, feats: list[dict], bs: int):
    from glmtune.data.collate import PackedCollator, PadCollator

    order = list(range(len(feats)))
    if variant == "random":
        random.Random(2).shuffle(order)
    elif variant == "grouped":  # what train.group_by_length does: similar lengths share a batch
        order.sort(key=lambda i: len(feats[i]["input_ids"]))
    col = PackedCollator(0, SEQ) if variant == "packed" else PadCollator(0)
    return [col([feats[i] for i in order[s:s + bs]]) for s in range(0, len(order), bs)]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_variant(kind: str, variant: str, steps: int) -> dict:
    """Runs inside a fresh subprocess."""
    import torch

    from glmtune.models.loss import causal_lm_loss_sum, plain_loss_sum

    model = build_model()
    if kind == "loss":
        bl = batches("random", loss_batch(1), 1)[0]
        work = [bl] * (steps + 1)
    else:
        work = batches(variant, mixed_samples(), 4)
        work = [work[0]] + work  # first batch repeated as warm-up
    lean = variant != "plain"
    base = rss_mb()
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = None
    tokens = 0
    for i, b in enumerate(work):
        if i == 1:
            t0 = time.perf_counter()
        loss_sum, n = causal_lm_loss_sum(model, b, 1024) if lean else plain_loss_sum(model, b)
        (loss_sum / n).backward()
        model.zero_grad(set_to_none=True)
        if i >= 1:
            # real (non-padding) tokens; ids are >= 100 and the pad id is 0
            tokens += int(b["attention_mask"].sum()) if "attention_mask" in b else int((b["input_ids"] != 0).sum())
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "variant": variant, "peak_mb": round(max(peak, peak0) - base, 1),
            "tokens_per_s": round(tokens / wall, 1), "steps": len(work) - 1,
            "rows_per_step": round(sum(b["input_ids"].shape[0] for b in work[1:]) / (len(work) - 1), 2),
            "padded_tokens": int(sum(b["input_ids"].numel() for b in work[1:])), "real_tokens": tokens,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON results path")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per loss variant (after 1 warm-up)")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        print(json.dumps(run_variant(*a._child, a.steps)))
        return
    rows = []
    for kind, variant in [("loss", "plain"), ("loss", "lean"), ("padding", "random"), ("padding", "grouped"),
                          ("padding", "packed")]:
        out = subprocess.run([sys.executable, __file__, "--out", a.out, "--steps", str(a.steps),
                              "--_child", kind, variant], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {kind}/{variant}: {rows[-1]}", file=sys.stderr, flush=True)
    by = {(r["kind"], r["variant"]): r for r in rows}
    summary = {
        "lean_over_plain_peak": round(by["loss", "lean"]["peak_mb"] / by["loss", "plain"]["peak_mb"], 3),
        "lean_over_plain_tokens_per_s": round(by["loss", "lean"]["tokens_per_s"] / by["loss", "plain"]["tokens_per_s"], 3),
        "grouped_over_random_tokens_per_s": round(by["padding", "grouped"]["tokens_per_s"] / by["padding", "random"]["tokens_per_s"], 3),
        "packed_over_random_tokens_per_s": round(by["padding", "packed"]["tokens_per_s"] / by["padding", "random"]["tokens_per_s"], 3),
    }
    print("| pair | variant | peak MB (step) | tokens/s | rows/step | padded / real tokens |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['variant']} | {r['peak_mb']} | {r['tokens_per_s']} | {r['rows_per_step']} | "
              f"{r['padded_tokens']} / {r['real_tokens']} |")
    print("\n" + "\n".join(f"- {k}: {v}" for k, v in summary.items()))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"model": {"vocab": VOCAB, "hidden": 256, "layers": 2}, "seq": SEQ,
                                       "answer_tokens": ANSWER, "results": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
