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
