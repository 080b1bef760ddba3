"""Verify a GGUF file with llama.cpp itself (llama-cpp-python, CPU) against the merged HF model it came from.

On the verification prompts (export/verify.py's, rendered by the HF tokenizer's chat template):
- prompt: the GGUF's own `tokenizer.chat_template` (rendered by llama-cpp-python's Jinja formatter) gives
  the same text, and llama.cpp's tokenizer turns that text into the same ids as `data.render.chat_ids`;
- stops: llama.cpp treats every stop id glmtune serves with as end-of-generation (`llama_vocab_is_eog`),
  and does not prepend a BOS the HF prompt lacks (`llama_vocab_get_add_bos`);
- logits: llama.cpp's logits at every prompt position vs transformers' (float32): max |Δ| within the
  quant type's tolerance, and top-1 agreement (llama.cpp with an f32 KV cache, so the file is what differs);
- greedy: a few greedy tokens from each engine; equal for the near-lossless types.

Memory: the transformers side is streamed one decoder layer at a time (export/stream_forward.py), so it costs
one layer in float32 whatever the model size; llama.cpp maps the GGUF file (it runs the whole network, so
the file's pages it reads are resident: at most the file's size, e.g. 0.5x the float32 model for f16,
0.15x for q4_k_m). The files are checked one after the other, each closed before the next is opened.
"""

from __future__ import annotations

import gc
from pathlib import Path

# Tolerance on max |Δlogit| (all prompt positions) as a fraction of the largest |logit|, and the least top-1
# agreement, per quant type. Measured on the tiny models (figures in verify.json / README "Deploy"): f32 only
# differs in summation order; f16/bf16 round weights (and llama.cpp rounds activations to f16 for f16
# matmuls); q8_0 adds 8-bit blocks; the k-quants lose more and are judged by top-1 agreement mostly.
# Measured relative max |Δlogit| (trained tiny LoRA run, 128 wide / untrained 256-wide tiny): f32 0.0002/0.0004,
# f16 0.0010/0.0011, bf16 0.0026/0.0072, q8_0 0.012/0.024, q6_k 0.011/0.066, q5_k_m 0.035/0.11, q4_k_m 0.11/0.20;
# top-1 over all positions of the untrained model (near-flat logits, many near ties): f16 97%, bf16 94%,
# q8_0 92%, q6_k 94%, q5_k_m 74%, q4_k_m 53%. The bounds leave 2-5x room on the logit gap.
TOLERANCE: dict[str, tuple[float, float, bool]] = {
    # quant: (relative max |Δlogit|, min top-1 agreement, greedy must be equal up to near ties)
    "f32": (1e-3, 0.99, True),
    "f16": (5e-3, 0.9, True),
    "bf16": (2e-2, 0.85, True),
    "q8_0": (6e-2, 0.8, True),
    "q6_k": (0.15, 0.75, False),
    "q5_k_m": (0.25, 0.6, False),
    "q4_k_m": (0.45, 0.4, False),
}
GREEDY_TOKENS = 12


def _hf_reference(hf_dir: Path, prompts: list[list[dict]], stop_ids: list[int], max_new: int) -> dict:
    """transformers' float32 logits and greedy tokens on the merged folder: streamed one decoder layer at a
    time (export/stream_forward.py), or, for a model type that cannot be streamed, the whole model loaded."""
    from transformers import AutoTokenizer

    from glmtune.data.render import chat_ids
    from glmtune.export.stream_forward import StreamedModel
    from glmtune.export.verify import CannotStream

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
    ids = [chat_ids(tok, m, add_generation_prompt=True) for m in prompts]
    try:
        model = StreamedModel(hf_dir)
    except CannotStream as err:
        logits, greedy, step_logits = _whole_model_reference(hf_dir, ids, stop_ids, max_new)
        how = f"whole model loaded in float32 ({err})"
    else:
        logits = [x.numpy() for x in model.logits(ids)]
        greedy, step_logits = model.greedy(ids, stop_ids, max_new)
        how = "streamed one decoder layer at a time in float32"
        del model
    gc.collect()
    return {"texts": texts, "ids": ids, "logits": logits, "greedy": greedy, "step_logits": step_logits,
            "eos_token": tok.eos_token or "", "bos_token": tok.bos_token or "", "how": how}


def _whole_model_reference(hf_dir: Path, ids: list[list[int]], stop_ids: list[int], max_new: int):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    logits, greedy, step_logits = [], [], []
    with torch.inference_mode():
        for p in ids:
            logits.append(model(input_ids=torch.tensor([p])).logits[0].float().numpy())
            seq, new, steps = list(p), [], []
            for _ in range(max_new):  # plain argmax loop: the same decision rule as the llama.cpp side
                last = model(input_ids=torch.tensor([seq])).logits[0, -1].float()
                steps.append(last.numpy())
                nxt = int(last.argmax())
                new.append(nxt)
                seq.append(nxt)
                if nxt in stop_ids:
                    break
            greedy.append(new)
            step_logits.append(steps)
    del model
    return logits, greedy, step_logits


_REF_CACHE: dict = {}


def verify_gguf(hf_dir: str | Path, gguf_path: str | Path, quant: str, stop_ids: list[int],
                prompts: list[list[dict]] | None = None, max_new: int = GREEDY_TOKENS) -> dict:
    import numpy as np

    from glmtune.export.gguf import llama_cpp_or_error
    from glmtune.export.verify import VERIFY_PROMPTS

    llama_cpp = llama_cpp_or_error()
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    prompts = prompts or VERIFY_PROMPTS
    key = (str(Path(hf_dir).resolve()), repr(prompts), tuple(stop_ids), max_new)
    if key not in _REF_CACHE:
        _REF_CACHE.clear()
        _REF_CACHE[key] = _hf_reference(Path(hf_dir), prompts, stop_ids, max_new)
    ref = _REF_CACHE[key]

    n_ctx = max(len(p) for p in ref["ids"]) + max_new + 8
    # The KV cache in f32: llama.cpp's default f16 cache rounds every key and value, which on a real model
    # (SmolLM2-135M, 30 layers, f32 GGUF) alone moves logits by 0.05 (1.2e-3 of the largest), more than the f32
    # bound, while the file itself is within 1e-4 (2e-6): the check judges the file, not the cache setting.
    f32 = llama_cpp.GGML_TYPE_F32
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=2,
                          logits_all=True, verbose=False, type_k=f32, type_v=f32)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        template = llm.metadata.get("tokenizer.chat_template")
        fmt = Jinja2ChatFormatter(template, eos_token=ref["eos_token"], bos_token=ref["bos_token"]) if template else None
        rendered_equal, ids_equal, diffs, top1, greedy_gguf = [], [], [], [], []
        for k, msgs in enumerate(prompts):
            rendered_equal.append(bool(fmt) and fmt(messages=msgs).prompt == ref["texts"][k])
            got_ids = llm.tokenize(ref["texts"][k].encode("utf-8"), add_bos=False, special=True)
            ids_equal.append(list(got_ids) == ref["ids"][k])
            llm.reset()
            llm.eval(ref["ids"][k])  # the HF ids, so logits compare position by position
            scores = np.array(llm.scores[: len(ref["ids"][k])], dtype=np.float32)
            want = ref["logits"][k]
            if scores.shape != want.shape:
                raise ValueError(f"logits shape {scores.shape} from llama.cpp vs {want.shape} from transformers")
            diffs.append(float(np.abs(scores - want).max()))
            top1.append(float((scores.argmax(-1) == want.argmax(-1)).mean()))
            new = []
            last = scores[-1]
            for _ in range(max_new):
                nxt = int(last.argmax())
                new.append(nxt)
                if llama_cpp.llama_vocab_is_eog(vocab, nxt):
                    break
                llm.eval([nxt])
                last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            greedy_gguf.append(new)
        eog = {int(i): bool(llama_cpp.llama_vocab_is_eog(vocab, int(i))) for i in stop_ids}
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    finally:
        llm.close() if hasattr(llm, "close") else None
        del llm
        gc.collect()

    max_ref = max(float(np.abs(x).max()) for x in ref["logits"])
    rel, min_top1, greedy_must = TOLERANCE[quant]
    tol = rel * max(1.0, max_ref)
    greedy_equal = greedy_gguf == ref["greedy"]
    # A greedy divergence is a failure unless it starts at a near tie: where the two engines pick different
    # tokens, transformers' own logits for the two are closer than the logit tolerance (random tiny models
    # have many such ties; a real conversion error does not hide behind one, it also breaks the logit bound).
    divergences = []
    for k, (a, b) in enumerate(zip(ref["greedy"], greedy_gguf)):
        i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if i is None:
            if len(a) != len(b):
                divergences.append({"prompt": k, "step": min(len(a), len(b)), "transformers_margin": None})
            continue
        lg = ref["step_logits"][k][i]
        divergences.append({"prompt": k, "step": i, "transformers_margin": float(lg[a[i]] - lg[b[i]])})
    bos_ok = not add_bos or any(p[:1] == [llama_cpp.llama_vocab_bos(vocab)] for p in ref["ids"])
    failures = []
    if not all(rendered_equal):
        failures.append("the GGUF's chat template renders prompts differently from the run's")
    if not all(ids_equal):
        failures.append("llama.cpp tokenizes the rendered prompt into different ids")
    if not all(eog.values()):
        failures.append(f"llama.cpp would not stop at stop ids {[i for i, ok in eog.items() if not ok]}")
    if not bos_ok:
        failures.append("llama.cpp prepends a BOS token the run's prompts do not have")
    if max(diffs) > tol:
        failures.append(f"max |Δlogit| {max(diffs):.3g} > tolerance {tol:.3g}")
    if min(top1) < min_top1:
        failures.append(f"top-1 agreement {min(top1):.0%} < {min_top1:.0%}")
    real_divergences = [d for d in divergences if d["transformers_margin"] is None or d["transformers_margin"] > tol]
    if greedy_must and real_divergences:
        failures.append(f"greedy tokens differ from transformers' beyond a near tie: {real_divergences}")
    return {
        "passed": not failures,
        "failures": failures,
        "quant": quant,
        "file": Path(gguf_path).name,
        "bytes": Path(gguf_path).stat().st_size,
        "max_abs_diff": max(diffs),
        "per_prompt_max_abs_diff": diffs,
        "tolerance": tol,
        "tolerance_rule": f"{rel:g} x max(1, max |logit|) = {rel:g} x {max(1.0, max_ref):.3g}",
        "max_abs_logit": max_ref,
        "top1_agreement": min(top1),
        "per_prompt_top1_agreement": top1,
        "min_top1_agreement": min_top1,
        "greedy_equal": greedy_equal,
        "greedy_required_equal": greedy_must,
        "greedy_divergences": divergences,
        "greedy_transformers": ref["greedy"],
        "greedy_llama_cpp": greedy_gguf,
        "gguf_template_renders_equal": rendered_equal,
        "prompt_ids_equal": ids_equal,
        "prompt_tokens": [len(p) for p in ref["ids"]],
        "stop_ids_end_generation": eog,
        "llama_cpp_adds_bos": add_bos,
        "n_vocab": n_vocab,
        "compared": "llama.cpp (llama-cpp-python, CPU) on the GGUF vs transformers float32 on the merged HF folder",
        "reference": ref["how"],
        "llama_cpp_kv_cache": "f32",
    }
