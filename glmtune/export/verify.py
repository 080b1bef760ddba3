"""Check an export against the run it came from: logits of the merged model loaded by plain
`AutoModelForCausalLM.from_pretrained` vs base + trained part, and the rendered prompt ids of the
exported tokenizer vs the run's (PEERS.md pain 5 and gap 6: no peer checks either).

The two models are loaded one after the other, never together, so verification needs the memory of
one model, as the merge itself does.
"""

from __future__ import annotations

import gc
from pathlib import Path

# A few chat shapes: one turn, a system prompt, several turns (Chinese and English).
VERIFY_PROMPTS: list[list[dict]] = [
    [{"role": "user", "content": "你好，请介绍一下你自己。"}],
    [{"role": "system", "content": "You are a strict grader."}, {"role": "user", "content": "Score: the cat sat."}],
    [{"role": "user", "content": "俗话说"}, {"role": "assistant", "content": "好的。"},
     {"role": "user", "content": "继续说下去，语速:2;停顿:3"}],
]

# Default tolerance on max |Δlogit|. float32: only summation order differs (LF measured 1.7e-6).
# Half precision: rounding each merged weight to 8 (bf16) / 11 (fp16) mantissa bits moves logits by
# about that relative amount, so the bound scales with the largest logit.
_ABS = {"float32": 1e-3}
_REL = {"bfloat16": 3e-2, "float16": 5e-3}


def default_tolerance(dtype_name: str, max_abs_logit: float) -> float:
    if dtype_name in _ABS:
        return _ABS[dtype_name]
    return _REL[dtype_name] * max(1.0, max_abs_logit)


def _logits(model, prompts: list[list[int]], device: str):
    import torch

    out = []
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids], device=device)
            out.append(model(input_ids=x).logits[0].float().cpu())
    return out


def verify_export(run_dir: str | Path, export_dir: str | Path, tolerance: float | None = None,
                  dtype_name: str = "float32", device: str = "cpu",
                  prompts: list[list[dict]] | None = None) -> dict:
    """Return the verify.json record; `passed` is False when logits or prompt ids disagree."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glmtune.data.render import chat_ids
    from glmtune.serve.engine import HFEngine

    prompts = prompts or VERIFY_PROMPTS
    engine = HFEngine.from_run(run_dir)
    trust = bool(getattr(engine.model.config, "auto_map", None))
    run_ids = [engine.prompt_ids(m) for m in prompts]
    quantized = _loaded_quantized(engine.model)
    ref = _logits(engine.model if quantized else engine.model.to(device), run_ids, device)
    del engine
    gc.collect()
    trained = None
    if quantized:
        # QLoRA: the export merges the adapter into the full-precision checkpoint (how QLoRA is deployed), so
        # that is the reference the merge must match; the 4-bit model it trained on differs from it by the
        # base's quantisation error, reported below, not judged.
        trained = ref
        ref = _logits(_full_precision_reference(run_dir).to(device), run_ids, device)
        gc.collect()

    tok = AutoTokenizer.from_pretrained(str(export_dir), trust_remote_code=trust)
    export_ids = [chat_ids(tok, m, add_generation_prompt=True) for m in prompts]
    # Loaded in float32 so the comparison measures the merge and the export dtype's rounding only.
    merged = AutoModelForCausalLM.from_pretrained(str(export_dir), dtype=torch.float32, trust_remote_code=trust)
    got = _logits(merged.eval().to(device), run_ids, device)
    del merged
    gc.collect()

    diffs = [float((a - b).abs().max()) for a, b in zip(ref, got)]
    top1 = [float((a.argmax(-1) == b.argmax(-1)).float().mean()) for a, b in zip(ref, got)]
    max_ref = max(float(a.abs().max()) for a in ref)
    tol = tolerance if tolerance is not None else default_tolerance(dtype_name, max_ref)
    ids_equal = export_ids == run_ids
    extra = {}
    if trained is not None:
        extra["vs_quantized_training_model"] = {
            "max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(trained, got)),
            "top1_agreement": [float((a.argmax(-1) == b.argmax(-1)).float().mean()) for a, b in zip(trained, got)],
        }
    return {
        "passed": bool(max(diffs) <= tol and ids_equal),
        "max_abs_diff": max(diffs),
        "tolerance": tol,
        "per_prompt_max_abs_diff": diffs,
        "top1_agreement": top1,
        "max_abs_logit": max_ref,
        "export_dtype": dtype_name,
        "prompt_ids_equal": ids_equal,
        "prompts": prompts,
        "prompt_tokens": [len(p) for p in run_ids],
        "compared": "merged (AutoModelForCausalLM.from_pretrained, float32) vs run base + trained part"
                    + (" (base in full precision; the run trained on it quantised)" if trained is not None else ""),
        **extra,
    }


def _loaded_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _full_precision_reference(run_dir: Path):
    """The run's adapter on its base loaded unquantised in float32 (what a QLoRA export computes)."""
    import json

    from glmtune.config.schema import ModelSection
    from glmtune.methods.lora import load_adapter
    from glmtune.models.load import load

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "method.json").read_text())
    loaded = load(ModelSection(path=meta["base"], trust_remote_code=meta.get("trust_remote_code", False),
                               dtype="float32"))
    return load_adapter(loaded.model, run_dir / meta["artifact"]).eval()
