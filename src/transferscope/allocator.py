"""Keep the memory a job frees for its next tensors (glibc malloc).

glibc hands allocations above a dynamic threshold (128 KiB, rising to at most 32 MiB)
straight to the kernel with ``mmap`` and unmaps them on free, and gives the free top of
the heap back past a trim threshold. A training or analysis job allocates tensors of the
same few sizes thousands of times, so every one is fresh memory that the kernel must
fault in and zero page by page: on the demo's fine-tuning runs about 600,000 minor page
faults and 2 s of system time per 15 s run. Raising both thresholds with ``mallopt``
(glibc, ``man 3 mallopt``) serves those tensors from memory already mapped; the numbers
computed do not change (checked bit for bit in ``benchmarks/bench_allocator.py``)."""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 << 20
"""Allocations up to this size come from the heap, never from a fresh mapping."""
TRIM_THRESHOLD_BYTES = 1 << 30
"""Up to this much free memory at the top of the heap stays mapped for reuse."""


def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (see the module); whether
    they were set: False where the C library has no ``mallopt`` (macOS) or refuses it
    (musl's stub)."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                               TRIM_THRESHOLD_BYTES))
