"""Host memory of `glmtune export` (streamed merge + streamed verification), reported by `glmtune plan`
next to training so a user knows before training whether the machine can also export the result.

What each phase holds (glmtune/export/merge.py, shards.py, verify.py):
  merge   one shard being filled (export.size) or the largest tensor being read, whichever is larger
          (a full shard is written before the next tensor is read), plus the weight being merged in
          float32 (LoRA is merged in place) and the adapter;
  verify  one decoder layer in float32 (the reference and the merged one are loaded in turn), one head
          slice of 16M floats (read through a map, then copied), the adapter; QLoRA also loads the 4-bit training model whole once, for the
          report of its gap to the full-precision merge.
They run one after the other in one process, on top of the interpreter (MERGE_BASE_BYTES, VERIFY_BASE_BYTES).
P-Tuning v2 has nothing to merge.

The other verbs that touch whole checkpoints (`other_estimates`), each after the merge when started from a run:
  gguf      llama.cpp's converter (a child process, lazy tensors) holds the largest tensor and its converted
            copy; llama.cpp's quantizer maps the lossless intermediate GGUF (its pages read stay resident);
            the check streams the float32 reference one layer at a time (export/stream_forward.py) and then
            llama.cpp maps the GGUF it runs: the largest file checked is resident.
  bnb       quantised module by module into one shard at a time (export/bnb.py); the check streams both the
            float32 reference and the quantised folder one decoder layer at a time.
  convert   tensors streamed from the source shards into one output shard at a time; a fused QKV and its
            three split copies are held together; then the native tokenizer is built (its own, smaller peak).
"""

from __future__ import annotations

import json
from pathlib import Path

from glmtune.plan.facts import ModelFacts

# The interpreter under each phase (benchmarks/export_memory.py, the tiny run): `glmtune export --no-verify`
# peaks at 0.29 GB; verification imports PEFT and the model classes, and `glmtune export` peaks at 0.49 GB.
MERGE_BASE_BYTES = 0.3e9
VERIFY_BASE_BYTES = 0.5e9
HEAD_SLICE_BYTES = 2 * 4 * (1 << 24)  # verify.py _HEAD_SLICE_FLOATS in float32: mapped, then copied
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def checkpoint_bytes(facts: ModelFacts) -> int:
    """Bytes per weight of the checkpoint on disk: its config's dtype, or 2 for built-in models (bf16)."""
    if facts.folder:
        cfg = json.loads((Path(facts.folder) / "config.json").read_text())
        return _BYTES.get(cfg.get("dtype") or cfg.get("torch_dtype") or "float32", 4)
    return 2


def export_estimate(facts: ModelFacts, method: str, export_cfg, st) -> dict:
    """{merge, verify, peak} bytes of host memory for exporting a `method` run of `facts`, or a reason."""
    from glmtune.utils.shards import parse_size
    from glmtune.methods import get, label
    from glmtune.plan.memory import trainable_params

    m = get(method)
    if m.merge_unsupported_reason:
        return {"peak_bytes": None, "note": f"{label(method)} cannot be merged: nothing to merge, serve the run instead"}
    src = checkpoint_bytes(facts)
    out = src if export_cfg.dtype == "auto" else _BYTES[export_cfg.dtype]
    largest = max([facts.vocab * facts.hidden] + [a * b for _, a, b in facts.linear_shapes()])
    read = largest * (src + (out if out != src else 0))  # a tensor and its cast copy
    low_rank = m.artifact == "adapter"   # a low-rank delta merged into each adapted weight (LoRA-type)
    adapter = 4 * trainable_params(facts, method, st) if low_rank else 0
    merging = 0
    if low_rank:
        biggest_linear = max(a * b for _, a, b in facts.linear_shapes())
        merging = biggest_linear * (4 + (src if src != 4 else 0) + (out if out != 4 else 0))
    merge = max(parse_size(export_cfg.size), read) + merging + adapter
    verify = 4 * facts.layer_params() + HEAD_SLICE_BYTES + adapter
    if m.quantizes_base:  # the 4-bit training model, loaded whole once (NF4 linears + 16-bit embeddings)
        verify += facts.linear_params() * 0.5625 + facts.embedding_params() * 2
    peak = max(MERGE_BASE_BYTES + merge, VERIFY_BASE_BYTES + verify if export_cfg.verify else 0)
    return {"merge_bytes": merge, "verify_bytes": verify if export_cfg.verify else None, "peak_bytes": peak,
            "interpreter_bytes": VERIFY_BASE_BYTES if export_cfg.verify else MERGE_BASE_BYTES,
            "whole_model_fp32_bytes": 4 * facts.param_count(),
            "shard_size": export_cfg.size, "note": None}


# Interpreter + libraries under each verb, measured on the tiny GLM-4 model / tiny ChatGLM (benchmarks/export_memory.py
# baseline rows): llama.cpp's converter process, `glmtune export --format gguf` (transformers + llama.cpp loaded),
# `glmtune export --quant bnb4` (bitsandbytes), `glmtune convert`.
GGUF_CONVERTER_BASE_BYTES = 0.27e9
GGUF_BASE_BYTES = 0.42e9
BNB_BASE_BYTES = 0.45e9
CONVERT_BASE_BYTES = 0.5e9
# `glmtune convert` before the tokenizer is built (the tiny run's peak is the tokenizer conversion, after the
# weights): 330M float32 with 200MB shards peaked at 0.66 GB = this + 0.2 GB shard + the 0.13 GB embedding.
CONVERT_WEIGHTS_BASE_BYTES = 0.32e9
# llama.cpp's own buffers for the check's short context (KV cache, compute graph, logits of every position).
LLAMA_CPP_RUN_BYTES = 0.1e9
# Rows of float32 logits the GGUF and bnb checks keep: every position of the verification prompts (~150 tokens)
# and each greedy step's (3 prompts x 12 steps), with room.
CHECK_LOGITS = 256


def _largest_tensor(facts: ModelFacts) -> int:
    return max([facts.vocab * facts.hidden] + [a * b for _, a, b in facts.linear_shapes()])


def gguf_estimate(facts: ModelFacts, quants=("f16",), verify: bool = True, src_bytes: int | None = None) -> dict:
    """Host memory of `glmtune export --merged M --format gguf --quant QUANTS` (after any merge)."""
    from glmtune.utils.gguf_types import BITS_PER_WEIGHT, QUANTS

    src = src_bytes or checkpoint_bytes(facts)
    n = facts.param_count()
    lossless = {4: "f32", 2: "f16"}[src]
    out_of = {q: n * BITS_PER_WEIGHT[q] / 8 for q in quants}
    largest = _largest_tensor(facts)
    convert = GGUF_CONVERTER_BASE_BYTES + largest * (src + 4)  # the tensor read + its float32/converted copy
    quantize = None
    if any(QUANTS[q][0] == "quantize" for q in quants):  # the lossless GGUF mapped, one output tensor built
        quantize = GGUF_BASE_BYTES + n * BITS_PER_WEIGHT[lossless] / 8 + largest * 4
    check = None
    if verify:
        logits = CHECK_LOGITS * facts.vocab * 4  # the reference's logits, kept while llama.cpp runs
        check = GGUF_BASE_BYTES + logits + max(4 * facts.layer_params() + HEAD_SLICE_BYTES,
                                               max(out_of.values()) + LLAMA_CPP_RUN_BYTES)
    peak = max(x for x in (convert, quantize, check) if x is not None)
    return {"convert_bytes": convert, "quantize_bytes": quantize, "verify_bytes": check, "peak_bytes": peak,
            "file_bytes": {q: int(b) for q, b in out_of.items()}, "quants": list(quants)}


def bnb_estimate(facts: ModelFacts, quant: str = "bnb4", verify: bool = True, shard_size: str = "2GB") -> dict:
    """Host memory of `glmtune export --merged M --quant bnb4|bnb8` (after any merge)."""
    from glmtune.utils.shards import parse_size

    largest = _largest_tensor(facts)
    src = checkpoint_bytes(facts)
    per_linear = 0.5625 if quant == "bnb4" else 1.0  # NF4 + double-quantised absmax; int8 + row scales
    output = facts.linear_params() * per_linear + facts.embedding_params() * 4
    # a tensor as read, its float32 copy (none for a float32 checkpoint), and the quantised form (at most
    # 1 byte per weight), with a shard.
    quantize = BNB_BASE_BYTES + min(parse_size(shard_size), output) + largest * (src + (4 if src != 4 else 0) + 1)
    check = None
    if verify:  # both sides streamed: a float32 layer, or a quantised layer and one linear dequantised
        check = BNB_BASE_BYTES + CHECK_LOGITS * facts.vocab * 4 + 4 * facts.layer_params() + HEAD_SLICE_BYTES
    return {"quantize_bytes": quantize, "verify_bytes": check, "output_bytes": int(output),
            "peak_bytes": max(quantize, check or 0), "quant": quant}


def convert_estimate(facts: ModelFacts, max_shard: str = "2GB", dtype_bytes: int | None = None) -> dict:
    """Host memory of `glmtune convert SRC DST --max-shard S` for a remote-code ChatGLM checkpoint of `facts`."""
    from glmtune.utils.shards import parse_size

    src = checkpoint_bytes(facts)
    out = dtype_bytes or src
    qkv = facts.hidden * (facts.heads + 2 * facts.kv_heads) * facts.head_dim
    held = max(_largest_tensor(facts) * (src + (out if out != src else 0)), qkv * (src + 2 * out))
    weights = CONVERT_WEIGHTS_BASE_BYTES + min(parse_size(max_shard), facts.param_count() * out) + held
    return {"peak_bytes": max(weights, CONVERT_BASE_BYTES), "weights_bytes": weights, "shard_size": max_shard}


def other_estimates(facts: ModelFacts, export_cfg) -> dict:
    """What `glmtune plan` shows for GGUF (f16, q4_k_m), bnb4 and convert next to the merged export."""
    verify = export_cfg.verify
    out = {"gguf_f16": gguf_estimate(facts, ("f16",), verify), "gguf_q4_k_m": gguf_estimate(facts, ("q4_k_m",), verify),
           "bnb4": bnb_estimate(facts, "bnb4", verify, export_cfg.size)}
    if facts.family == "chatglm":
        out["convert"] = convert_estimate(facts, export_cfg.size)
    return out
