"""Size parsing and a safetensors shard writer that never holds more than one shard in memory.

The writer is what keeps an export's peak memory near one shard: tensors are appended to an
in-memory shard until the next one would push it past the limit, then the shard is written and
dropped. File names and `model.safetensors.index.json` follow the Hugging Face layout
(`model-00001-of-00003.safetensors`), which transformers and vLLM load as-is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors.torch import save_file

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """'2GB' -> 2_000_000_000; '200KB' -> 200_000; '1GiB' -> 1_073_741_824; plain ints are bytes.

    Decimal units as in transformers' `max_shard_size` (LLaMA-Factory's `export_size` only takes whole GB).
    """
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", str(text).upper())
    if not m:
        raise ValueError(f"export.size {text!r}: expected a size such as 500MB, 2GB or 5GB")
    value = float(m.group(1)) * _UNITS[m.group(2) or "B"]
    if value < 1:
        raise ValueError(f"export.size {text!r} must be at least 1 byte")
    return int(value)


def tensor_bytes(t) -> int:
    return t.numel() * t.element_size()


# A shard file is 8 bytes of header length + a JSON header + the data. The header entry of one tensor
# (`"name":{"dtype":"F32","shape":[..],"data_offsets":[..,..]}`) is its name plus well under 128 bytes,
# so counting that keeps the *file* under the limit, not only the tensor bytes.
HEADER_BASE, HEADER_PER_TENSOR = 64, 128


def entry_bytes(name: str, t) -> int:
    return tensor_bytes(t) + len(name.encode()) + HEADER_PER_TENSOR


class ShardWriter:
    """Collect tensors into shards of at most `max_bytes` and write each shard as soon as it is full.

    A single tensor larger than `max_bytes` cannot be split (the HF format keeps a tensor in one
    file), so it gets a shard of its own; `oversized` lists those so the caller can report them.
    """

    def __init__(self, out_dir: Path, max_bytes: int, prefix: str = "model"):
        self.out_dir = Path(out_dir)
        self.max_bytes = max_bytes
        self.prefix = prefix
        self._buf: dict = {}
        self._buf_bytes = HEADER_BASE
        self.files: list[tuple[str, list[str], int]] = []  # (temporary file name, tensor names, bytes)
        self.oversized: list[str] = []
        self.max_buffered_bytes = 0  # evidence for the memory bound: never more than one shard held

    def make_room(self, name: str, nbytes: int) -> None:
        """Flush now if a tensor of `nbytes` would not fit, so the caller can read it after the flush."""
        if self._buf and self._buf_bytes + nbytes + len(name.encode()) + HEADER_PER_TENSOR > self.max_bytes:
            self._flush()

    def add(self, name: str, tensor) -> None:
        size = entry_bytes(name, tensor)
        if self._buf and self._buf_bytes + size > self.max_bytes:
            self._flush()
        if size + HEADER_BASE > self.max_bytes:
            self.oversized.append(name)
        self._buf[name] = tensor.contiguous()
        self._buf_bytes += size
        self.max_buffered_bytes = max(self.max_buffered_bytes, self._buf_bytes)

    def _flush(self) -> None:
        if not self._buf:
            return
        tmp_name = f"{self.prefix}-part{len(self.files) + 1:05d}.safetensors"
        save_file(self._buf, str(self.out_dir / tmp_name), metadata={"format": "pt"})
        self.files.append((tmp_name, list(self._buf), sum(tensor_bytes(t) for t in self._buf.values())))
        self._buf, self._buf_bytes = {}, HEADER_BASE

    def close(self) -> dict:
        """Write the last shard, give shards their final `-of-N` names, write the index; return it."""
        self._flush()
        n = len(self.files)
        weight_map: dict[str, str] = {}
        total = 0
        for i, (tmp, names, size) in enumerate(self.files, start=1):
            final = f"{self.prefix}.safetensors" if n == 1 else f"{self.prefix}-{i:05d}-of-{n:05d}.safetensors"
            (self.out_dir / tmp).rename(self.out_dir / final)
            weight_map.update({k: final for k in names})
            total += size
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        # Written even for one shard: tools that look for the index (and our tests) find the same layout.
        (self.out_dir / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return index
