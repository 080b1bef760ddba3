"""Stream a LoRA/DoRA merge tensor by tensor: base checkpoint in, merged safetensors shards out.

Peak memory is one shard being filled + the adapter + one base tensor, never the whole model twice
(LLaMA-Factory loads base and adapter whole and merges in RAM, LF#4672/#3131).
Each base tensor is read with `safetensors.safe_open` (pread, not memory-mapped), merged on `device` in float32,
cast to the export dtype and handed to a `ShardWriter`.

The merge math is PEFT's own (peft/tuners/lora/layer.py `Linear.merge`, dora.py `get_weight_norm`):
    LoRA:  W' = W + s·B@A                 s = alpha/r, or alpha/sqrt(r) with rsLoRA
    DoRA:  W' = m / ‖W + s·B@A‖_row · (W + s·B@A)     (norm over the input dim, one per output row)
Tests compare the result with PEFT's `merge_and_unload` weights and logits.
Adapters using PEFT features this does not reproduce (rank/alpha patterns, LoRA biases, embedding
LoRA, fan_in_fan_out, ...) are reported by `streaming_unsupported` and merged in memory by PEFT instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from glmtune.errors import GlmtuneError, RunFailure
from glmtune.utils.memory import release_freed_memory

PEFT_PREFIX = "base_model.model."


class ExportError(GlmtuneError, RuntimeError):
    """An export that cannot be done as asked (exit 2); the message says why and what to do."""


class ExportFailure(RunFailure, ExportError):
    """An export that ran and failed: it did not verify, or llama.cpp's converter/quantizer failed (exit 1)."""


@dataclass
class LoraDelta:
    A: object  # [r, in]
    B: object  # [out, r]
    scale: float
    magnitude: object | None = None  # DoRA magnitude vector [out]


class FileTensors(Mapping):
    """The tensors of one safetensors file by name, each read (pread) only when asked for: freeze's
    trained layers replace the base's one at a time instead of all being held through the merge."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = Path(path)
        with safe_open(str(self.path), "pt", backend="pread") as h:
            self._keys = list(h.keys())
        self._set = set(self._keys)

    def __getitem__(self, name: str):
        from safetensors import safe_open

        if name not in self._set:
            raise KeyError(name)
        with safe_open(str(self.path), "pt", backend="pread") as h:
            return h.get_tensor(name)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def adapter_config(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def streaming_unsupported(cfg: dict) -> str | None:
    """Why this adapter cannot be merged by the streaming path (None when it can)."""
    if cfg.get("peft_type") != "LORA":
        return f"peft_type {cfg.get('peft_type')!r} is not LoRA"
    checks = {
        "rank_pattern": bool(cfg.get("rank_pattern")), "alpha_pattern": bool(cfg.get("alpha_pattern")),
        "bias": cfg.get("bias", "none") != "none", "lora_bias": bool(cfg.get("lora_bias")),
        "fan_in_fan_out": bool(cfg.get("fan_in_fan_out")), "layer_replication": bool(cfg.get("layer_replication")),
        "trainable_token_indices": bool(cfg.get("trainable_token_indices")), "use_qalora": bool(cfg.get("use_qalora")),
        "target_parameters": bool(cfg.get("target_parameters")),
    }
    used = [k for k, on in checks.items() if on]
    return f"adapter uses {', '.join(used)}" if used else None


def read_lora(adapter_dir: Path) -> tuple[dict[str, LoraDelta], dict]:
    """Adapter file -> ({base tensor name: LoraDelta}, {base tensor name: replacement tensor}).

    Replacements are PEFT `modules_to_save` copies (e.g. a fully trained lm_head), saved under the
    plain module name.
    """
    from safetensors.torch import load_file

    cfg = adapter_config(adapter_dir)
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.exists():
        raise ExportError(f"{adapter_dir}: no adapter_model.safetensors (was the run saved with safetensors?)")
    state = load_file(str(path))
    parts: dict[str, dict] = {}
    replacements = {}
    for key, tensor in state.items():
        name = key.removeprefix(PEFT_PREFIX)
        if "lora_embedding_" in name:
            raise ExportError("embedding LoRA is not streamed")  # caught by the caller -> in-memory merge
        for tag in (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"):
            if name.endswith(tag):
                parts.setdefault(name[: -len(tag)] + ".weight", {})[tag] = tensor
                break
        else:
            replacements[name] = tensor
    deltas = {}
    for weight_name, p in parts.items():
        if ".lora_A.weight" not in p or ".lora_B.weight" not in p:
            raise ExportError(f"{adapter_dir}: {weight_name} has an incomplete LoRA pair ({sorted(p)})")
        deltas[weight_name] = LoraDelta(p[".lora_A.weight"], p[".lora_B.weight"], scale, p.get(".lora_magnitude_vector"))
    return deltas, replacements


def merge_weight(W, delta: LoraDelta, device, out_dtype):
    """One merged weight, computed in float32 on `device` (the PEFT formulas in the module docstring)."""
    import torch

    w = W.to(device=device, dtype=torch.float32)  # W itself when it is float32 already: updated in place
    a = delta.A.to(device=device, dtype=torch.float32)
    b = delta.B.to(device=device, dtype=torch.float32)
    if (b.shape[0], a.shape[1]) != tuple(w.shape):
        raise ExportError(f"LoRA delta shape {(b.shape[0], a.shape[1])} does not match weight {tuple(w.shape)}")
    # In place (W += s·B@A, then the DoRA row scale): no full-size temporaries beside the weight itself.
    w.addmm_(b, a, alpha=delta.scale)
    if delta.magnitude is not None:
        norm = torch.linalg.norm(w, dim=1)
        w.mul_((delta.magnitude.to(device=device, dtype=torch.float32) / norm).view(-1, 1))
    return w.to(dtype=out_dtype, device="cpu")


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, in index order when there is an index."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    files = [f for f in files if f.name != "adapter_model.safetensors"]
    if not files:
        raise ExportError(
            f"{folder} has no *.safetensors weights. Convert .bin checkpoints first, e.g. load and "
            f"`save_pretrained(..., safe_serialization=True)`."
        )
    return files


def checkpoint_keys(folder: Path) -> set[str]:
    from safetensors import safe_open

    keys: set[str] = set()
    for f in checkpoint_files(folder):
        with safe_open(str(f), "pt", backend="pread") as h:
            keys.update(h.keys())
    return keys


def iter_checkpoint(folder: Path, before_read=None) -> Iterator[tuple[str, object]]:
    """(name, tensor) one at a time; only the current tensor is materialised. `before_read(name, shape,
    dtype)` (safetensors dtype string, e.g. "BF16") is called before each tensor is read.

    Read with pread, not through a memory map: every page of a mapped file that was read stays in the
    process's resident set while the file is open, so mapping a one-file checkpoint counted the whole
    file against the export's memory (benchmarks/export_memory.py)."""
    from safetensors import safe_open

    for f in checkpoint_files(folder):
        with safe_open(str(f), "pt", backend="pread") as h:
            for name in h.keys():
                if before_read:
                    sl = h.get_slice(name)
                    before_read(name, sl.get_shape(), sl.get_dtype())
                yield name, h.get_tensor(name)


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def stream_merge(source: Path, writer, out_dtype, device: str = "cpu",
                 deltas: dict | None = None, replacements: dict | None = None, progress=None) -> dict:
    """Read `source` tensor by tensor, apply LoRA deltas / replacements, cast, write into `writer`."""
    import torch

    deltas, replacements = deltas or {}, replacements or {}
    missing = (set(deltas) | set(replacements)) - checkpoint_keys(source)
    if missing:
        raise ExportError(f"adapter names {sorted(missing)[:3]} not found in base checkpoint {source}")
    def make_room(name, shape, dtype):
        # Write out a shard that this tensor will not fit in *before* reading the tensor, so a shard and a
        # large tensor (the embedding) are never held together.
        if hasattr(writer, "make_room"):
            size = out_dtype.itemsize if dtype in _FLOAT_DTYPES else _DTYPE_BYTES.get(dtype, 8)
            writer.make_room(name, math.prod(shape) * size)

    merged = 0
    for name, tensor in iter_checkpoint(source, make_room):
        if name in replacements:
            tensor = replacements[name]
        if name in deltas:
            tensor = merge_weight(tensor, deltas[name], device, out_dtype if tensor.is_floating_point() else tensor.dtype)
            merged += 1
        elif tensor.is_floating_point():
            tensor = tensor.to(out_dtype)
        writer.add(name, tensor)
        del tensor
        release_freed_memory()
        if progress:
            progress(name)
    return {"merged_weights": merged, "replaced": len(replacements), "device": str(torch.device(device))}
