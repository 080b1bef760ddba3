"""`export_run(run_dir, cfg)`: a run folder -> a plain Hugging Face model folder that transformers and
vLLM load as-is, written atomically and verified against the run's adapter model.

Three ways, chosen from what the run folder holds (never from the method's name, which only the
registry matches):
  * a LoRA/DoRA adapter PEFT-compatible with streaming  -> stream the merge shard by shard (merge.py);
    QLoRA adapters take this path too: they merge into the full-precision base checkpoint on disk,
    which is how a QLoRA model is deployed (a 4-bit base cannot hold the delta exactly);
  * full weights (`model/` with safetensors, from full) -> stream-copy them, casting the dtype;
  * freeze's trained tensors (`model/trained.safetensors`) -> stream the base with them in place;
  * anything else -> load base + trained part, ask the method to `merge()`; a method that cannot
    (e.g. a learned prefix) stops here with the reason and what to do instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from glmtune.export.merge import ExportError, ExportFailure

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "vocab.txt")


@dataclass
class ExportResult:
    out_dir: Path
    report: dict
    verify: dict | None


def _dtype(name: str, source_config: dict):
    import torch

    if name == "auto":
        name = source_config.get("dtype") or source_config.get("torch_dtype") or "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name], name


def _check_device(device: str):
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExportError(f"export.device={device!r} but no CUDA device is visible; use export.device=cpu")
    return dev


def _copy_support_files(run, base_dir: Path, source_dir: Path, out: Path, dtype_name: str, stop_ids) -> None:
    """config.json (with the export dtype), generation_config.json, tokenizer + chat template, remote code.

    The tokenizer comes from the run's `tokenizer/` (what training rendered with) and is copied byte
    for byte, so the chat template survives (templates lost in export: LLaMA-Factory#5986, GLM-4#607).
    """
    config = json.loads((source_dir / "config.json").read_text())
    config["dtype"] = dtype_name
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype_name
    config.pop("quantization_config", None)  # the exported weights are plain tensors
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    gen = base_dir / "generation_config.json"
    if gen.exists():
        shutil.copy2(gen, out / gen.name)
    else:  # without it, vLLM and plain generate() would not stop at GLM's <|user|>
        (out / gen.name).write_text(json.dumps({"eos_token_id": list(stop_ids)}, indent=2) + "\n")
    tok_dir = run.tokenizer_dir or base_dir
    for name in TOKENIZER_FILES:
        if (tok_dir / name).exists():
            shutil.copy2(tok_dir / name, out / name)
    _template_into_tokenizer_config(out)
    for py in base_dir.glob("*.py"):  # remote-code checkpoints (ChatGLM) need their modelling/tokenizer code
        shutil.copy2(py, out / py.name)


def _template_into_tokenizer_config(out: Path) -> None:
    """transformers 5 saves the chat template as chat_template.jinja; older readers (transformers < 4.43, TGI,
    llama.cpp's converter) only look in tokenizer_config.json, so the template the run trained with goes there too."""
    jinja, cfg_file = out / "chat_template.jinja", out / "tokenizer_config.json"
    if jinja.exists() and cfg_file.exists():
        cfg = json.loads(cfg_file.read_text("utf-8"))
        cfg["chat_template"] = jinja.read_text("utf-8")
        cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", "utf-8")


def _readable(folder: Path) -> None:
    """Temp files are created 0600/0700; a model folder is meant to be read by other users (vLLM, docker)."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~mask)


LOCK_NAME = ".export.lock"  # inside a staging folder: flock-held by the exporting process while it lives
LOCKLESS_GRACE_S = 600  # a staging folder without a lock, untouched this long, is abandoned


def _staging_pattern(out: Path) -> re.Pattern:
    # atomic_dir's mkdtemp names: .NAME.<8 chars of [a-z0-9_]>.partial (so ".exp.v2.*" of export "exp.v2" is not ours)
    return re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}\.partial")


def _is_abandoned(folder: Path) -> tuple[bool, str]:
    """(abandoned?, who) for a staging folder: its lock can be taken only once the process that held it died
    (the kernel drops a flock with its holder, kill -9 included; pids can be reused, locks cannot)."""
    import fcntl

    lock = folder / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR)  # writable: NFS emulates flock with write locks
    except PermissionError:  # another user's export: not ours to judge
        return False, "not ours"
    except FileNotFoundError:  # a glmtune without locks, or an export in its first/last milliseconds
        try:
            age = time.time() - folder.stat().st_mtime
        except OSError:  # renamed into place meanwhile
            return False, ""
        return age > LOCKLESS_GRACE_S, f"no lock, untouched {age / 60:.0f} min"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held (EWOULDBLOCK), or locks unsupported here: never remove what may be running
        return False, "running"
    finally:
        os.close(fd)
    try:
        pid = lock.read_text().split()[0]
    except (OSError, IndexError):
        pid = "?"
    return True, f"export pid {pid} gone"


def _folder_bytes(folder: Path) -> int:
    total = 0
    for f in folder.rglob("*"):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except OSError:  # removed meanwhile (another export sweeping too)
            pass
    return total


def sweep_stale_staging(out: Path, log=print) -> list[str]:
    """Remove staging folders of `out` left by exports that were killed; leave running ones. One line if any.

    Also tidies atomic_dir's `.NAME.old` when no export of `out` is in progress: removed if `out` exists,
    put back as `out` if a kill fell between its two renames (so the last complete export is never lost)."""
    parent, pattern = out.parent, _staging_pattern(out)
    if not parent.is_dir():
        return []
    removed, live = [], 0
    for folder in sorted(parent.iterdir()):
        if not pattern.fullmatch(folder.name) or not folder.is_dir():
            continue
        abandoned, who = _is_abandoned(folder)
        if not abandoned:
            live += 1
            continue
        size = _folder_bytes(folder)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(f"{folder.name} ({size / 1e6:.1f} MB, {who})")
    if removed:
        log(f"export: removed {len(removed)} staging folder(s) of killed exports in {parent}: {', '.join(removed)}")
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not live:
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            log(f"export: removed {old}, the previous export an interrupted export left behind")
        else:
            os.replace(old, out)
            log(f"export: restored {out} from {old} (an export was killed while swapping folders)")
    return removed


@contextmanager
def staging_dir(out: str | Path, log=print):
    """`atomic_dir(out)` whose staging folder holds a flock'ed lock file while this process lives, after
    sweeping the staging folders of killed exports of `out`. The lock file never reaches `out`."""
    import fcntl
    import socket

    from glmtune.utils.io import atomic_dir

    out = Path(out)
    sweep_stale_staging(out, log)
    fd = None
    try:
        with atomic_dir(out) as staging:
            fd = os.open(staging / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            yield staging
            (staging / LOCK_NAME).unlink()  # the flock stays held (on the open fd) through the rename
    finally:
        if fd is not None:
            os.close(fd)


def _in_memory_merge(run, out: Path, max_bytes: int, torch_dtype) -> dict:
    from glmtune.methods import get
    from glmtune.run.load import load_trained

    model, _ = load_trained(run)
    merged = get(run.method).merge(model.eval())
    if merged is None:
        run_dir = run.dir
        raise ExportError(
            f"method {run.method!r} cannot be merged into the base: it does not change base weights "
            f"(it learns e.g. a prefix), so there is nothing to fold in. Use the run directly: "
            f"`glmtune serve --run {run_dir}` or `glmtune chat --run {run_dir}`."
        )
    merged = merged.to(torch_dtype)
    merged.save_pretrained(str(out), max_shard_size=max_bytes, safe_serialization=True)
    return {"mode": "in_memory", "note": "whole model held in memory (this method cannot be streamed)"}


def export_run(run_dir: str | Path, cfg=None, out_dir: str | Path | None = None, log=print) -> ExportResult:
    """Merge, shard, write atomically, verify. Raises ExportError (nothing left that looks complete)."""
    from glmtune.export.config import ExportSection
    from glmtune.export.merge import FileTensors, adapter_config, read_lora, stream_merge, streaming_unsupported
    from glmtune.utils.shards import ShardWriter, parse_size
    from glmtune.models.families import family_of
    from glmtune.models.load import load_tokenizer, model_type_of, stop_token_ids
    from glmtune.run.folder import EXPORT, as_run
    from glmtune.utils.io import atomic_write_json

    cfg = cfg or ExportSection()
    run = as_run(run_dir)
    run_dir = run.dir
    base_dir = run.base_path
    artifact = run.artifact
    out = Path(out_dir or cfg.output_dir or run_dir / EXPORT)
    max_bytes = parse_size(cfg.size)
    device = _check_device(cfg.device)
    full_weights = run.full_weights
    source_dir = artifact if full_weights else base_dir
    torch_dtype, dtype_name = _dtype(cfg.dtype, json.loads((source_dir / "config.json").read_text()))
    tok = load_tokenizer(run.tokenizer_dir or base_dir, run.trust_remote_code)
    stop_ids = stop_token_ids(tok, family_of(model_type_of(base_dir)))

    t0 = time.perf_counter()
    report: dict = {"run": str(run_dir), "method": run.method, "base": str(base_dir), "dtype": dtype_name,
                    "device": str(device), "max_shard_bytes": max_bytes}
    with staging_dir(out, log) as staging:
        acfg = adapter_config(artifact)
        trained = artifact / "trained.safetensors"  # freeze: trained tensors that replace the base's
        why = streaming_unsupported(acfg) if acfg else (
            "full weights" if full_weights else None if trained.exists() else "no adapter")
        if full_weights or why is None:
            deltas, replacements = ({}, {}) if full_weights else read_lora(artifact) if acfg else ({}, FileTensors(trained))
            writer = ShardWriter(staging, max_bytes)
            log(f"export: streaming {'copy' if full_weights else 'merge'} of {source_dir} -> {out} "
                f"({dtype_name}, shards <= {cfg.size}, on {device})")
            stats = stream_merge(source_dir, writer, torch_dtype, str(device), deltas, replacements)
            index = writer.close()
            report.update(mode="streaming_copy" if full_weights else "streaming_merge", **stats,
                          dora=bool(acfg.get("use_dora")), shards=len(writer.files),
                          total_bytes=index["metadata"]["total_size"], oversized_tensors=writer.oversized,
                          max_buffered_bytes=writer.max_buffered_bytes)
            if writer.oversized:
                log(f"export: {len(writer.oversized)} tensor(s) exceed {cfg.size} and got a shard of their own: "
                    f"{writer.oversized[:3]}")
        else:
            log(f"export: cannot stream ({why}); merging in memory with PEFT")
            report.update(_in_memory_merge(run, staging, max_bytes, torch_dtype), reason=why)
        _copy_support_files(run, base_dir, source_dir, staging, dtype_name, stop_ids)
        report["seconds"] = round(time.perf_counter() - t0, 3)
        atomic_write_json(staging / "export.json", report)
        _readable(staging)
        verify = None
        if cfg.verify:
            from glmtune.export.verify import verify_export

            verify = verify_export(run, staging, cfg.tolerance, dtype_name, str(device), log=log)
            atomic_write_json(staging / "verify.json", verify)
            _readable(staging)
            if not verify["passed"]:
                failed = out.with_name(out.name + ".verify-failed.json")
                atomic_write_json(failed, verify)
                raise ExportFailure(
                    f"export verification failed: {verify['failure']} "
                    f"(details in {failed}). Nothing was written to {out}."
                )
    if verify and "vs_quantized_training_model" in verify:
        q = verify["vs_quantized_training_model"]
        log(f"export: merged into the full-precision base; against the 4-bit model the run trained on: "
            f"max |Δlogit| {q['max_abs_diff']:.3g}, top-1 agreement "
            f"{min(q['top1_agreement']):.0%}-{max(q['top1_agreement']):.0%} (the base's quantisation error)")
    log(f"export: wrote {out} in {report['seconds']} s"
        + (f"; verified: max |Δlogit| {verify['max_abs_diff']:.2e} <= {verify['tolerance']:.1e}" if verify else ""))
    return ExportResult(out, report, verify)

