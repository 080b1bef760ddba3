"""`glmtune export --run RUN --quant bnb4|bnb8`: a transformers-loadable bitsandbytes folder (NF4 with double
quantisation, or LLM.int8), for GPU servers short of memory; checked against the full-precision export.

    merged HF folder --(from_pretrained(quantization_config=...), save_pretrained)--> OUT (config.json carries
    the quantization_config, so `AutoModelForCausalLM.from_pretrained(OUT)` loads it quantised)
    --(reload OUT, logits/greedy vs the full-precision folder)--> verify.json

The quantised model is saved before it ever runs a forward: on CPUs with AVX512-BF16, bitsandbytes re-packs
4-bit weights in place on the first eval forward and its save path does not undo that exactly (see
methods/qlora.py); the reloaded copy used for verification keeps the standard layout for the same reason.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from pathlib import Path

from glmtune.export.merge import ExportError, ExportFailure

# relative max |Δlogit| (x max(1, max |logit|)) and least top-1 agreement. Measured on the tiny LoRA run:
# bnb8 0.8% and 100%, bnb4 6.3% and 89%; the bounds leave about 2-4x room.
BNB_TOLERANCE = {"bnb8": (0.03, 0.9), "bnb4": (0.15, 0.75)}


def _bnb_config(quant: str):
    import torch
    from transformers import BitsAndBytesConfig

    if quant == "bnb8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)


def _dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _logits_and_greedy(model, ids: list[list[int]], stop_ids: list[int], max_new: int):
    import torch

    logits, greedy = [], []
    with torch.inference_mode():
        for p in ids:
            logits.append(model(input_ids=torch.tensor([p])).logits[0].float())
            seq, new = list(p), []
            for _ in range(max_new):
                nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
                new.append(nxt)
                seq.append(nxt)
                if nxt in stop_ids:
                    break
            greedy.append(new)
    return logits, greedy


def export_bnb(source: str | Path, quant: str, out_dir: str | Path | None = None, cfg=None, verify: bool = True,
               log=print) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from glmtune.data.render import chat_ids
    from glmtune.export.config import ExportSection
    from glmtune.export.pipeline import TOKENIZER_FILES, export_run
    from glmtune.export.verify import VERIFY_PROMPTS
    from glmtune.methods.qlora import keep_standard_4bit_layout
    from glmtune.models.families import family_of
    from glmtune.models.load import load_tokenizer, model_type_of, stop_token_ids
    from glmtune.run.folder import is_finished
    from glmtune.utils.io import atomic_dir, atomic_write_json

    if quant not in BNB_TOLERANCE:
        raise ExportError(f"--quant {quant!r}: the hf format quantises with bnb4 or bnb8")
    source = Path(source)
    is_run = is_finished(source)
    out = Path(out_dir or (source / f"export-{quant}" if is_run else source.with_name(f"{source.name}-{quant}")))
    failed_path = out.with_name(out.name + ".verify-failed.json")
    t0 = time.perf_counter()
    with atomic_dir(out) as staging:
        if is_run:
            hf = staging / ".hf"
            export_run(source, cfg or ExportSection(), out_dir=hf, log=log)
        else:
            hf = source
        log(f"export: quantising {hf.name} with bitsandbytes ({quant})")
        model = AutoModelForCausalLM.from_pretrained(str(hf), quantization_config=_bnb_config(quant),
                                                     dtype=torch.float32, device_map="cpu")
        model.save_pretrained(str(staging), safe_serialization=True)  # before any forward (see module doc)
        del model
        gc.collect()
        for name in (*TOKENIZER_FILES, "generation_config.json"):
            if (hf / name).exists():
                shutil.copy2(hf / name, staging / name)
        for py in hf.glob("*.py"):
            shutil.copy2(py, staging / py.name)
        record = {"quant": quant, "bytes": _dir_bytes(staging), "full_precision_bytes": _dir_bytes(hf),
                  "source": str(source)}
        if verify:
            tok = load_tokenizer(hf)
            stops = stop_token_ids(tok, family_of(model_type_of(hf)))
            ids = [chat_ids(tok, m, add_generation_prompt=True) for m in VERIFY_PROMPTS]
            full = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
            ref, ref_greedy = _logits_and_greedy(full, ids, stops, 12)
            del full
            gc.collect()
            q = AutoModelForCausalLM.from_pretrained(str(staging), device_map="cpu")  # plain load, as a user would
            if quant == "bnb4":
                keep_standard_4bit_layout(q)
            got, got_greedy = _logits_and_greedy(q.eval(), ids, stops, 12)
            loaded_quantized = bool(getattr(q, "is_loaded_in_4bit", False) or getattr(q, "is_loaded_in_8bit", False))
            del q
            gc.collect()
            diffs = [float((a - b).abs().max()) for a, b in zip(ref, got)]
            top1 = [float((a.argmax(-1) == b.argmax(-1)).float().mean()) for a, b in zip(ref, got)]
            max_ref = max(float(a.abs().max()) for a in ref)
            rel, min_top1 = BNB_TOLERANCE[quant]
            tol = rel * max(1.0, max_ref)
            record.update(max_abs_diff=max(diffs), tolerance=tol, max_abs_logit=max_ref, top1_agreement=min(top1),
                          min_top1_agreement=min_top1, greedy_equal=got_greedy == ref_greedy,
                          greedy_full_precision=ref_greedy, greedy_quantized=got_greedy,
                          loaded_quantized=loaded_quantized,
                          compared="AutoModelForCausalLM.from_pretrained(OUT) (bitsandbytes) vs the full-precision "
                                   "merged folder in float32, on export/verify.py's prompts")
            record["passed"] = bool(max(diffs) <= tol and min(top1) >= min_top1 and loaded_quantized)
            if not record["passed"]:
                atomic_write_json(failed_path, record)
                raise ExportFailure(f"{quant} verification failed: max |Δlogit| {max(diffs):.3g} "
                                    f"(tolerance {tol:.3g}), top-1 {min(top1):.0%} (least {min_top1:.0%}); "
                                    f"figures in {failed_path}. Nothing was written to {out}.")
            atomic_write_json(staging / "verify.json", record)
        if hf != source:
            shutil.rmtree(hf)
        record["seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(staging / "export.json", record)
        staging.chmod(0o755)
    failed_path.unlink(missing_ok=True)
    log(f"export: wrote {out} ({quant}): {record['bytes'] / 1e6:.2f} MB of weights vs "
        f"{record['full_precision_bytes'] / 1e6:.2f} MB full precision"
        + (f"; max |Δlogit| {record['max_abs_diff']:.3g} (tolerance {record['tolerance']:.3g}), "
           f"top-1 {record['top1_agreement']:.0%}, greedy {'equal' if record['greedy_equal'] else 'differs'}"
           if verify else ""))
    return out
