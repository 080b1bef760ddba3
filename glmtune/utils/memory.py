"""Giving freed memory back to the OS between the layers of a streamed export, verification or convert."""

from __future__ import annotations

_TRIM = None


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc `malloc_trim`; a no-op elsewhere).

    Layer after layer of tensors of a few MB to a few tens of MB are allocated and freed; glibc raises its
    mmap threshold after the first such free, so later ones come from the heap, whose free pages it keeps:
    verifying a 20-layer model, the resident set grew by ~10 MB per layer (benchmarks/export_memory.py)
    although only one layer is alive. No library exposes this, hence ctypes."""
    global _TRIM
    if _TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)
