"""`glmtune export --run RUN --quant bnb4|bnb8`: a transformers-loadable bitsandbytes folder (NF4 with double
quantisation, or LLM.int8), for GPU servers short of memory; checked against the full-precision export.

    merged HF folder --(quantize_streamed: module by module, transformers' own bnb quantizer ops)--> OUT
    (config.json carries the quantization_config, so `AutoModelForCausalLM.from_pretrained(OUT)` loads it
    quantised) --(reload OUT, logits/greedy vs the full-precision folder, streamed)--> verify.json

Bounded memory. `from_pretrained(quantization_config=...)` + `save_pretrained` holds the whole quantised model
plus the memory-mapped source pages it read (1.5x the float32 size of a 330M model, benchmarks/export_memory.py).
Here the model is built on the meta device, transformers' bnb quantizer swaps in its `Linear4bit`/`Linear8bitLt`
modules (`preprocess_model`, the same call `from_pretrained` makes), and the merged tensors are read one at a
time (pread): each module, once all its tensors are in, is quantised by the same ops transformers applies on
load (`Params4bit(...).to(device)`, `Int8Params(...).to(device)`), its `state_dict()` (bnb's own serialisation)
goes into the shard writer, and its weights are dropped. The files equal save_pretrained's bit for bit
(tests/export/test_bounded_memory_paths.py); peak memory is one output shard plus one tensor. Verification
streams both sides one decoder layer at a time (export/stream_forward.py): the full-precision reference in
float32, and the quantised folder through the Linear4bit/Linear8bitLt modules transformers' quantizer builds
from its config, each rebuilt from the saved statistics with the calls transformers' bnb loader makes (the
logits equal a plain `from_pretrained(OUT)`'s, tests/export/test_bounded_memory_paths.py).

The quantised weights are written before anything runs a forward: on CPUs with AVX512-BF16, bitsandbytes
re-packs 4-bit weights in place on the first eval forward and its save path does not undo that exactly (see
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


def quantize_streamed(hf: Path, out: Path, quant: str, max_shard: str | int = "2GB", device: str = "cpu") -> dict:
    """Write `hf` quantised with bitsandbytes into `out` (weights + config.json), module by module."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.quantizers import AutoHfQuantizer

    from glmtune.export.merge import iter_checkpoint, release_freed_memory
    from glmtune.utils.shards import ShardWriter, parse_size

    config = AutoConfig.from_pretrained(str(hf))
    if getattr(config, "auto_map", None):
        raise _CannotStreamQuant(f"remote-code model ({config.model_type})")
    quantizer = AutoHfQuantizer.from_config(_bnb_config(quant), pre_quantized=False)
    dev = torch.device(device)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    quantizer.preprocess_model(model=model, dtype=torch.float32, device_map={"": dev.type}, checkpoint_files=None,
                               use_kernels=False)
    owner: dict[str, str] = {}  # tensor name -> module name; tied duplicates map to None
    pending: dict[str, set[str]] = {}
    seen_ids: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        mod = name.rpartition(".")[0]
        if id(param) in seen_ids:  # a tied alias (lm_head = embed_tokens): saved once, under the first name
            owner[name] = None
            continue
        seen_ids.add(id(param))
        owner[name] = mod
        pending.setdefault(mod, set()).add(name.rpartition(".")[2])
    writer = ShardWriter(out, parse_size(max_shard))
    held: dict[str, dict] = {}
    quantized = 0
    for name, tensor in iter_checkpoint(hf):
        if name not in owner:
            raise ExportError(f"{hf}: tensor {name} has no place in {type(model).__name__}")
        mod_name = owner[name]
        if mod_name is None:
            continue
        held.setdefault(mod_name, {})[name.rpartition(".")[2]] = tensor
        if set(held[mod_name]) != pending[mod_name]:
            continue
        module = model.get_submodule(mod_name)
        quantized += _fill(module, quantizer, held.pop(mod_name), dev)
        prefix = mod_name + "." if mod_name else ""
        for key, value in module.state_dict(prefix=prefix).items():
            writer.add(key, value.cpu())
        for n in list(module._parameters):
            module._parameters[n] = None  # drop this module's weights before the next one is read
        del tensor
        release_freed_memory()
    if held:
        raise ExportError(f"{hf}: incomplete modules, e.g. {next(iter(held))} lacks "
                          f"{sorted(pending[next(iter(held))] - set(held[next(iter(held))]))}")
    writer.close()
    quantizer.postprocess_model(model)  # sets config.quantization_config, as from_pretrained does
    model.config.dtype = torch.float32
    model.config.save_pretrained(str(out))
    return {"quantized_linears": quantized, "oversized_tensors": writer.oversized,
            "max_buffered_bytes": writer.max_buffered_bytes}


class _CannotStreamQuant(Exception):
    pass


def _fill(module, quantizer, tensors: dict, device) -> int:
    """Put `tensors` into `module`, quantising a bnb linear's weight with the op transformers uses on load."""
    import bitsandbytes as bnb
    import torch

    done = 0
    for pname, value in tensors.items():
        old = module._parameters[pname]
        if value.is_floating_point():
            value = value.to(torch.float32)
        if pname == "weight" and isinstance(module, bnb.nn.Linear4bit):
            new = bnb.nn.Params4bit(value, requires_grad=False, **old.__dict__).to(device)
            done += 1
        elif pname == "weight" and isinstance(module, bnb.nn.Linear8bitLt):
            kwargs = dict(old.__dict__)
            kwargs.pop("SCB", None)
            new = bnb.nn.Int8Params(value.to("cpu"), requires_grad=False, **kwargs).to(device)
            done += 1
        else:
            new = torch.nn.Parameter(value.to(device), requires_grad=False)
        module._parameters[pname] = new
    return done


def _reference(hf: Path, ids, stops, max_new: int):
    """Full-precision logits and greedy tokens: streamed one layer at a time, else the whole model."""
    import torch
    from transformers import AutoModelForCausalLM

    from glmtune.export.stream_forward import StreamedModel
    from glmtune.export.verify import CannotStream

    try:
        model = StreamedModel(hf)
    except CannotStream as err:
        full = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
        ref, greedy = _logits_and_greedy(full, ids, stops, max_new)
        del full
        gc.collect()
        return ref, greedy, f"whole model loaded in float32 ({err})"
    greedy, _ = model.greedy(ids, stops, max_new)
    return model.logits(ids), greedy, "streamed one decoder layer at a time in float32"


def _quantized_side(out: Path, ids, stops, max_new: int, quant: str):
    """Logits and greedy tokens of the quantised folder, streamed one layer at a time through the bnb modules
    transformers' quantizer builds from OUT's config (else loaded whole by a plain `from_pretrained(OUT)`)."""
    from transformers import AutoModelForCausalLM

    from glmtune.export.stream_forward import StreamedModel
    from glmtune.export.verify import CannotStream
    from glmtune.methods.qlora import keep_standard_4bit_layout

    try:
        model = StreamedModel(out)
    except CannotStream as err:
        q = AutoModelForCausalLM.from_pretrained(str(out), device_map="cpu")  # plain load, as a user would
        if quant == "bnb4":
            keep_standard_4bit_layout(q)
        got, greedy = _logits_and_greedy(q.eval(), ids, stops, max_new)
        loaded = bool(getattr(q, "is_loaded_in_4bit", False) or getattr(q, "is_loaded_in_8bit", False))
        del q
        gc.collect()
        return got, greedy, loaded, f"whole folder loaded by from_pretrained ({err})"
    # One prompt at a time, as the plain load is run: LLM.int8 picks its fp16 outlier columns over the whole
    # batch, so batching the prompts would move bnb8's figures a little (0.223 -> 0.227 on the 330M model).
    got, greedy = [], []
    for p in ids:
        got += model.logits([p])
        greedy += model.greedy([p], stops, max_new)[0]
    return (got, greedy, bool(model.bnb),
            "streamed one decoder layer at a time through transformers' bnb modules built from OUT's config")


def export_bnb(source: str | Path, quant: str, out_dir: str | Path | None = None, cfg=None, verify: bool = True,
               log=print) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from glmtune.data.render import chat_ids
    from glmtune.export.config import ExportSection
    from glmtune.export.pipeline import TOKENIZER_FILES, export_run
    from glmtune.export.verify import VERIFY_PROMPTS
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
        log(f"export: quantising {hf.name} with bitsandbytes ({quant}), module by module")
        try:
            how = quantize_streamed(hf, staging, quant, max_shard=(cfg or ExportSection()).size)
            how["how"] = "streamed module by module"
        except _CannotStreamQuant as err:
            model = AutoModelForCausalLM.from_pretrained(str(hf), quantization_config=_bnb_config(quant),
                                                         dtype=torch.float32, device_map="cpu")
            model.save_pretrained(str(staging), safe_serialization=True)  # before any forward (see module doc)
            del model
            gc.collect()
            how = {"how": f"whole model loaded by from_pretrained ({err})"}
        for name in (*TOKENIZER_FILES, "generation_config.json"):
            if (hf / name).exists():
                shutil.copy2(hf / name, staging / name)
        for py in hf.glob("*.py"):
            shutil.copy2(py, staging / py.name)
        record = {"quant": quant, "bytes": _dir_bytes(staging), "full_precision_bytes": _dir_bytes(hf),
                  "source": str(source), "quantization": how}
        if verify:
            tok = load_tokenizer(hf)
            stops = stop_token_ids(tok, family_of(model_type_of(hf)))
            ids = [chat_ids(tok, m, add_generation_prompt=True) for m in VERIFY_PROMPTS]
            ref, ref_greedy, ref_how = _reference(hf, ids, stops, 12)
            got, got_greedy, loaded_quantized, got_how = _quantized_side(staging, ids, stops, 12, quant)
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
                                   "merged folder in float32, on export/verify.py's prompts", reference=ref_how,
                          quantized_side=got_how)
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
