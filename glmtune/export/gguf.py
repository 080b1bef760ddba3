"""`glmtune export --format gguf [--quant f16,q8_0,...]`: a run or a merged HF folder -> GGUF files for
llama.cpp / Ollama, each loaded back by llama.cpp and checked against the HF model before it is kept.

    run --(export_run: merge + verify vs adapter)--> merged HF folder (hidden, in the staging folder)
        --(llama.cpp's convert_hf_to_gguf, gguf_convert.py)--> model-f16.gguf / -bf16 / -f32
        --(llama.cpp's llama_model_quantize, via llama-cpp-python)--> model-q8_0.gguf, model-q4_k_m.gguf ...
        --(gguf_verify.py: llama.cpp on CPU vs transformers)--> verify.json; Modelfile (ollama.py)

Everything is written in a hidden staging folder next to the output and renamed into place only after
every file verified; a failure leaves no complete-looking folder (the figures go to OUT.verify-failed.json).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from glmtune.export.merge import ExportError, ExportFailure
from glmtune.utils.gguf_types import BITS_PER_WEIGHT, QUANTS


def size_estimates(model: str) -> dict[str, int]:
    """Bytes on disk per GGUF type for a model the planner knows (`glmtune/plan/facts.py`), e.g. glm-4-9b-chat-hf."""
    from glmtune.plan.facts import builtin_facts

    facts = builtin_facts(model)
    if facts is None:
        raise ExportError(f"{model!r}: not in the planner's model table")
    n = facts.param_count()
    return {q: int(n * bpw / 8) for q, bpw in BITS_PER_WEIGHT.items()}


# The converter's lossless outtype for the merged folder's dtype: quantization starts from it.
_LOSSLESS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


@dataclass
class GGUFResult:
    out_dir: Path
    files: dict[str, Path]
    verify: dict
    report: dict


def parse_quants(spec: str | list[str] | None) -> list[str]:
    items = spec if isinstance(spec, list) else (spec or "f16").split(",")
    quants = [q.strip().lower() for q in items if q.strip()]
    bad = [q for q in quants if q not in QUANTS]
    if bad or not quants:
        raise ExportError(f"--quant {','.join(bad) or spec!r}: choose from {', '.join(QUANTS)} (comma-separated)")
    return list(dict.fromkeys(quants))


def llama_cpp_or_error():
    try:
        import llama_cpp
    except ImportError as err:
        raise ExportError(
            "GGUF export needs llama-cpp-python (llama.cpp itself quantizes and verifies the files): "
            "`pip install 'glmtune[gguf]'` (builds llama.cpp from source: needs cmake and a C++ compiler)"
        ) from err
    return llama_cpp


def _run_dtype(hf_dir: Path) -> str:
    cfg = json.loads((hf_dir / "config.json").read_text())
    return str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", "")


def convert(hf_dir: Path, outfile: Path, outtype: str, stop_ids: list[int], log=print, name: str | None = None) -> dict:
    """llama.cpp's converter in a subprocess (see gguf_convert.py); its log goes to OUTFILE.convert.log."""
    cmd = [sys.executable, "-m", "glmtune.export.gguf_convert", "--stop-ids", ",".join(map(str, stop_ids)),
           str(hf_dir), "--outfile", str(outfile), "--outtype", outtype] + (["--model-name", name] if name else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    logfile = outfile.with_name(outfile.name + ".convert.log")
    logfile.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not outfile.exists():
        tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()][-3:]
        raise ExportFailure(f"llama.cpp's converter failed on {hf_dir} (exit {proc.returncode}): "
                            + " | ".join(tail))
    notes = [ln.split("glmtune: ", 1)[1] for ln in (proc.stdout + proc.stderr).splitlines() if "glmtune: " in ln]
    return {"seconds": round(time.perf_counter() - t0, 2), "outtype": outtype, "fixes_applied": notes}


def quantize(src: Path, dst: Path, ftype_name: str, threads: int | None = None) -> dict:
    """llama.cpp's own quantizer (`llama-quantize`), through llama-cpp-python's binding."""
    import ctypes

    llama_cpp = llama_cpp_or_error()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = threads or min(4, os.cpu_count() or 1)
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.exists():
        raise ExportFailure(f"llama.cpp could not quantize {src.name} to {ftype_name} "
                            f"(llama_model_quantize returned {rc})")
    return {"seconds": round(time.perf_counter() - t0, 2), "from": src.name, "ftype": ftype_name}


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type the file holds (k-quants fall back on rows not divisible by 256)."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))


def _is_run(path: Path) -> bool:
    from glmtune.run.folder import is_finished

    return is_finished(path)


def export_gguf(source: str | Path, quants: str | list[str] | None = None, out_dir: str | Path | None = None,
                cfg=None, verify: bool = True, modelfile: bool = True, system: str | None = None,
                log=print) -> GGUFResult:
    """GGUF files (one per quant) + verify.json + Modelfile in OUT; raises ExportError, leaving nothing."""
    from glmtune.export.config import ExportSection
    from glmtune.export.gguf_verify import verify_gguf
    from glmtune.export.pipeline import export_run
    from glmtune.models.families import family_of
    from glmtune.models.load import load_tokenizer, model_type_of, stop_token_ids
    from glmtune.utils.io import atomic_dir, atomic_write_json

    source = Path(source)
    quants = parse_quants(quants)
    cfg = cfg or ExportSection()
    if _is_run(source):
        out = Path(out_dir or source / "export-gguf")
    elif (source / "config.json").exists() and any(source.glob("*.safetensors")):
        out = Path(out_dir or source.with_name(source.name + "-gguf"))
    else:
        raise ExportError(f"{source}: neither a finished run folder (method.json) nor a merged model folder "
                          f"(config.json + *.safetensors)")
    if verify:
        llama_cpp_or_error()  # before minutes of merging and converting
    elif any(QUANTS[q][0] == "quantize" for q in quants):
        llama_cpp_or_error()
    t0 = time.perf_counter()
    report: dict = {"source": str(source), "quants": quants, "files": {}}
    failed_path = out.with_name(out.name + ".verify-failed.json")
    with atomic_dir(out) as staging:
        if _is_run(source):
            hf_dir = staging / ".hf"
            log(f"export: merging {source} into a Hugging Face folder first")
            res = export_run(source, cfg, out_dir=hf_dir, log=log)
            report["hf_export"] = {"verify_max_abs_diff": (res.verify or {}).get("max_abs_diff"),
                                   "dtype": res.report["dtype"], "mode": res.report["mode"]}
        else:
            hf_dir = source
        tok = load_tokenizer(hf_dir)
        family = family_of(model_type_of(hf_dir))
        stop_ids = stop_token_ids(tok, family)
        report.update(family=family.name, stop_ids=stop_ids,
                      stop_tokens=tok.convert_ids_to_tokens(stop_ids), hf_dtype=_run_dtype(hf_dir))
        lossless = _LOSSLESS.get(report["hf_dtype"], "f32")
        files: dict[str, Path] = {}
        steps: dict[str, dict] = {}
        intermediate = None
        for q in quants:
            how, arg = QUANTS[q]
            dst = staging / f"model-{q}.gguf"
            if how == "convert":
                log(f"export: llama.cpp convert_hf_to_gguf -> {dst.name}")
                steps[q] = convert(hf_dir, dst, arg, stop_ids, log, name=source.name)
            else:
                if intermediate is None:
                    intermediate = files.get(lossless) or staging / f".model-{lossless}.gguf"
                    if not intermediate.exists():
                        log(f"export: llama.cpp convert_hf_to_gguf -> {lossless} (quantization source)")
                        steps[f"{lossless}_source"] = convert(hf_dir, intermediate, lossless, stop_ids, log,
                                                              name=source.name)
                log(f"export: llama.cpp quantize {intermediate.name.lstrip('.')} -> {dst.name}")
                steps[q] = quantize(intermediate, dst, arg)
            files[q] = dst
        verify_all: dict = {"passed": True, "files": {}}
        if verify:
            for q, path in files.items():
                log(f"export: verifying {path.name} with llama.cpp against the HF model")
                v = verify_gguf(hf_dir, path, q, stop_ids)
                v["tensor_types"] = tensor_types(path)
                verify_all["files"][path.name] = v
                verify_all["passed"] &= v["passed"]
            if not verify_all["passed"]:
                atomic_write_json(failed_path, verify_all)
                bad = {n: v["failures"] for n, v in verify_all["files"].items() if not v["passed"]}
                raise ExportFailure(f"GGUF verification failed: {bad} (figures in {failed_path}). "
                                    f"Nothing was written to {out}.")
            atomic_write_json(staging / "verify.json", verify_all)
        if modelfile:
            from glmtune.export.ollama import write_modelfiles

            report["modelfiles"] = write_modelfiles(staging, hf_dir, files, stop_ids, system=system, log=log)
        # The hidden merged folder and quantization source are working files, not part of the output.
        if hf_dir != source:
            shutil.rmtree(hf_dir)
        if intermediate is not None and intermediate.name.startswith("."):
            intermediate.unlink(missing_ok=True)
            log_of = intermediate.with_name(intermediate.name + ".convert.log")
            if log_of.exists():  # the quantized files' conversion log, kept under a visible name
                log_of.rename(staging / f"quant-source-{lossless}.convert.log")
        for q, path in files.items():
            report["files"][path.name] = {"quant": q, "bytes": path.stat().st_size, **steps[q]}
        report["seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(staging / "export.json", report)
        for f in staging.iterdir():
            f.chmod(0o644)
        staging.chmod(0o755)
    failed_path.unlink(missing_ok=True)
    for name, info in report["files"].items():
        v = verify_all["files"].get(name) if verify else None
        log(f"export: {name}: {info['bytes'] / 1e6:.2f} MB"
            + (f"; llama.cpp vs transformers: max |Δlogit| {v['max_abs_diff']:.3g} (tolerance {v['tolerance']:.3g}), "
               f"top-1 {v['top1_agreement']:.0%}, greedy {'equal' if v['greedy_equal'] else 'differs'}" if v else ""))
    return GGUFResult(out, {q: out / p.name for q, p in files.items()}, verify_all, report)
