"""Prefill attention after a cached prefix (glmtune.inference.kv._prefix_split_attention) against hand-built
variants from torch ops, one thread, at the grading workload's shapes (GLM-4 tiny: 4 query heads, 2 KV heads,
head_dim 32, fp32): ms per call (one layer) and max |delta| of the output against a float64 reference.

    OMP_NUM_THREADS=1 python benchmarks/prefill_attention.py --new 4000 --past 556 --json runs/bench/prefill_attention.json

Variants:
  current        the code in kv.py: new queries x past keys (GQA packed, no mask) + new x new (causal,
                 K/V expanded to 4 heads), merged by log-sum-exp.
  chunkC         new queries in chunks of C: per chunk one non-causal flash call with the GQA group's query
                 heads packed as one sequence over [past + earlier new keys], plus a causal flash call on
                 the chunk's diagonal block (K/V expanded); log-sum-exp merge.
  chunkCa        chunkC with chunk ends where past + end is a multiple of C (whole key blocks).
  mathC          per chunk of C queries: scores = q @ k^T (GQA packed by a reshape), -inf above the
                 diagonal, softmax, @ v (plain matmuls, no flash kernel).
  sdpa_masked    what transformers' "sdpa" attention does without the split: one SDPA call with the
                 [new, past + new] boolean mask (enable_gqa), every block computed.
  flash_calls    only the two flash calls of `current`, inputs prepared beforehand (the floor of its glue;
                 the |delta| column is current's).
  matmuls_only   math64's two matmuls alone (no softmax): the fp32 GEMM floor of any exact kernel here.
  flash_uniformM / onednn_graphM
                 not a correct attention: the same number of scores (new x (past + new/2) per query head)
                 as uniform calls of M packed query rows over past + new/2 keys, no mask; flash, and the
                 oneDNN Graph fused SDPA (TorchScript `torch.jit.enable_onednn_fusion`). The floor of any
                 split built from these kernels.
  causal_full    a no-prefix causal prefill of the same number of tokens with flash (for scale).

Measured on the project's 2-core AMD EPYC (AVX512, MKL sgemm ~90 GFLOP/s on one core), torch 2.13, new 4000,
past 556: current 84-87 ms; chunked flash (C = 384...2048, aligned or not) 83-88 ms, within the run-to-run
noise; mathC 104 ms (C=64) to 470 ms (C=2048); sdpa_masked 219 ms; matmuls_only 67 ms; flash_uniform1000
75 ms; onednn_graph 88-118 ms. So the flash kernel is already within ~25% of the bare fp32 GEMM time, and no
split of it can gain more than ~12% (flash_uniform): kv.py keeps the two-call split.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def current(query, key, value, scaling):
    from glmtune.inference.kv import _prefix_split_attention

    return _prefix_split_attention(None, query, key, value, None, scaling=scaling)[0]


def _merge(o1, l1, o2, l2):
    lse = torch.logaddexp(l1, l2)
    return o1 * torch.exp(l1 - lse) + o2 * torch.exp(l2 - lse)


def chunked(query, key, value, scaling, chunk, aligned=False):
    b, heads, q, d = query.shape
    kv_heads, past = key.shape[1], key.shape[2] - q
    rep = heads // kv_heads
    out = query.new_empty(b, q, heads, d)
    # aligned: chunk ends where past + end is a multiple of `chunk`, so every non-causal call sees whole
    # 512-key blocks of the flash kernel (but the past-only first call)
    ends = list(range(chunk - past % chunk, q, chunk)) if aligned else list(range(chunk, q, chunk))
    for a, e in zip([0] + ends, ends + [q]):
        c = e - a
        qc = query[:, :, a:e]
        kd, vd = key[:, :, past + a:past + e], value[:, :, past + a:past + e]
        if rep > 1:
            kd = kd[:, :, None].expand(b, kv_heads, rep, c, d).reshape(b, heads, c, d)
            vd = vd[:, :, None].expand(b, kv_heads, rep, c, d).reshape(b, heads, c, d)
        o2, l2 = flash(qc, kd, vd, 0.0, True, scale=scaling)[:2]
        if past + a == 0:
            out[:, a:e] = o2.transpose(1, 2)
            continue
        o1, l1 = flash(qc.reshape(b, kv_heads, rep * c, d), key[:, :, :past + a], value[:, :, :past + a],
                       0.0, False, scale=scaling)[:2]
        o = _merge(o1.reshape(b, heads, c, d), l1.reshape(b, heads, c, 1), o2, l2.reshape(b, heads, c, 1))
        out[:, a:e] = o.transpose(1, 2)
    return out


def math_chunked(query, key, value, scaling, chunk):
    b, heads, q, d = query.shape
    kv_heads, past = key.shape[1], key.shape[2] - q
    rep = heads // kv_heads
    s = scaling if scaling is not None else d ** -0.5
    out = query.new_empty(b, q, heads, d)
    for a in range(0, q, chunk):
        e = min(a + chunk, q)
        c = e - a
        qc = (query[:, :, a:e] * s).reshape(b, kv_heads, rep * c, d)
        sc = qc @ key[:, :, :past + e].transpose(-1, -2)  # [b, kv, rep*c, past+e]
        diag = sc.view(b, kv_heads, rep, c, past + e)[..., past + a:]
        diag.masked_fill_(torch.ones(c, c, dtype=torch.bool).triu(1), float("-inf"))
        p = torch.softmax(sc, -1)
        o = p @ value[:, :, :past + e]
        out[:, a:e] = o.view(b, heads, c, d).transpose(1, 2)
    return out


def sdpa_masked(query, key, value, scaling):
    q, past = query.shape[2], key.shape[2] - query.shape[2]
    mask = torch.ones(q, past + q, dtype=torch.bool).tril(past)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                                           enable_gqa=True)
    return out.transpose(1, 2)


def flash_calls(query, key, value, scaling):
    b, heads, q, d = query.shape
    kv_heads, past = key.shape[1], key.shape[2] - q
    rep = heads // kv_heads
    qp = query.reshape(b, kv_heads, rep * q, d)
    kp, vp = key[:, :, :past], value[:, :, :past]
    kn = key[:, :, past:][:, :, None].expand(b, kv_heads, rep, q, d).reshape(b, heads, q, d)
    vn = value[:, :, past:][:, :, None].expand(b, kv_heads, rep, q, d).reshape(b, heads, q, d)

    def run():
        flash(qp, kp, vp, 0.0, False, scale=scaling)
        flash(query, kn, vn, 0.0, True, scale=scaling)
        return current(query, key, value, scaling)  # for the |delta| column; timing uses run_only

    run.timed = lambda: (flash(qp, kp, vp, 0.0, False, scale=scaling), flash(query, kn, vn, 0.0, True, scale=scaling))
    return run


def _masked_attention(q, k, v, mask):
    return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * 0.17677669529663687 + mask, -1) @ v  # 32**-0.5


def reference(query, key, value, scaling):
    q64, k64, v64 = query.double(), key.double(), value.double()
    b, heads, q, d = query.shape
    kv_heads, past = key.shape[1], key.shape[2] - q
    rep = heads // kv_heads
    k64 = k64.repeat_interleave(rep, 1)
    v64 = v64.repeat_interleave(rep, 1)
    out = torch.empty(b, q, heads, d, dtype=torch.float64)
    for a in range(0, q, 512):
        e = min(a + 512, q)
        sc = (q64[:, :, a:e] @ k64[:, :, :past + e].transpose(-1, -2)) * scaling
        mask = torch.ones(e - a, past + e, dtype=torch.bool).tril(past + a)
        sc.masked_fill_(~mask, float("-inf"))
        out[:, a:e] = (torch.softmax(sc, -1) @ v64[:, :, :past + e]).transpose(1, 2)
    return out


def timeit(f, reps):
    f()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=4000, help="new (uncached) prompt tokens")
    ap.add_argument("--past", type=int, default=556, help="cached prefix tokens")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5, help="timed calls per variant (the best is printed)")
    ap.add_argument("--chunks", default="512,1024,2048", help="chunk sizes for the chunked variants")
    ap.add_argument("--no-math", action="store_true", help="skip the plain-matmul variants")
    ap.add_argument("--onednn-graph", action="store_true", help="also time oneDNN Graph's fused SDPA (TorchScript)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    figures = {}
    torch.manual_seed(0)
    q, past, d = args.new, args.past, args.dim
    scaling = d ** -0.5
    # the engine's layout: query is a transposed view of [b, q, heads, d]; K/V are views of a preallocated
    # [slots, kv_heads, capacity, d] buffer
    query = torch.randn(1, q, args.heads, d).transpose(1, 2)
    kbuf = torch.randn(1, args.kv_heads, past + q + 256, d)
    vbuf = torch.randn(1, args.kv_heads, past + q + 256, d)
    key, value = kbuf[:, :, :past + q], vbuf[:, :, :past + q]
    ref = reference(query, key, value, scaling)

    variants = {"current": lambda: current(query, key, value, scaling)}
    for c in (int(x) for x in args.chunks.split(",")):
        variants[f"chunk{c}"] = lambda c=c: chunked(query, key, value, scaling, c)
        variants[f"chunk{c}a"] = lambda c=c: chunked(query, key, value, scaling, c, aligned=True)
    if not args.no_math:
        for c in (int(x) for x in args.chunks.split(",")):
            variants[f"math{c}"] = lambda c=c: math_chunked(query, key, value, scaling, c)
    variants["sdpa_masked"] = lambda: sdpa_masked(query, key, value, scaling)
    variants["flash_calls"] = flash_calls(query, key, value, scaling)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu {torch.backends.cpu.get_cpu_capability()}; "
          f"new {q}, past {past}, heads {args.heads}/{args.kv_heads}, dim {d}")
    print(f"{'variant':<14}{'ms/call':>10}{'max|d|':>12}")
    for name, f in variants.items():
        out = f()
        err = (out.double() - ref).abs().max().item()
        ms = timeit(getattr(f, 'timed', f), args.reps)
        figures[name] = {"ms": round(ms, 2), "max_abs_delta": err}
        print(f"{name:<14}{ms:>10.1f}{err:>12.2e}", flush=True)
    b, heads, _, _ = query.shape
    rep = heads // args.kv_heads

    def matmuls_only(chunk=64):
        for a in range(0, q, chunk):
            e = min(a + chunk, q)
            qc = query[:, :, a:e].reshape(b, args.kv_heads, rep * (e - a), d)
            (qc @ key[:, :, :past + e].transpose(-1, -2)) @ value[:, :, :past + e]

    ms = timeit(matmuls_only, args.reps)
    figures["matmuls_only"] = {"ms": round(ms, 2)}
    print(f"{'matmuls_only':<14}{ms:>10.1f}{'(QK^T and PV GEMMs, no softmax)':>40}")
    keys = past + q // 2
    rows = rep * q  # packed query rows per KV group
    mean_q = query.new_empty(b, args.kv_heads, rows, d).normal_()
    mean_k = key.new_empty(b, args.kv_heads, keys, d).normal_()
    mean_v = key.new_empty(b, args.kv_heads, keys, d).normal_()
    for m in (64, 1000):
        calls = range(math.ceil(rows / m))  # ceil: at least the score count of the real call
        qm = mean_q[:, :, :m]
        ms = timeit(lambda: [flash(qm, mean_k, mean_v, 0.0, False, scale=scaling) for _ in calls], args.reps)
        figures[f"flash_uniform{m}"] = {"ms": round(ms, 2)}
        print(f"{'flash_uniform' + str(m):<14}{ms:>10.1f}{'(same score count, no causal structure)':>40}")
        if args.onednn_graph:
            mask = torch.zeros(m, keys)
            torch.jit.enable_onednn_fusion(True)
            with torch.no_grad():
                traced = torch.jit.trace(_masked_attention, (qm, mean_k, mean_v, mask))
                for _ in range(3):  # profiling runs, then the fused graph
                    traced(qm, mean_k, mean_v, mask)
                ms = timeit(lambda: [traced(qm, mean_k, mean_v, mask) for _ in calls], args.reps)
            torch.jit.enable_onednn_fusion(False)
            figures[f"onednn_graph{m}"] = {"ms": round(ms, 2)}
            print(f"{'onednn_graph' + str(m):<14}{ms:>10.1f}{'(same score count, no causal structure)':>40}")
    qf = torch.randn(1, q + past, args.heads, d).transpose(1, 2)
    kf = torch.randn(1, args.heads, q + past, d)
    ms = timeit(lambda: flash(qf, kf, kf, 0.0, True, scale=scaling), args.reps)
    figures["causal_full"] = {"ms": round(ms, 2)}
    print(f"{'causal_full':<14}{ms:>10.1f}{'(no prefix, K/V expanded, q=new+past)':>40}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                   "cpu": torch.backends.cpu.get_cpu_capability(), "args": vars(args),
                                   "ms_per_call": figures}, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
