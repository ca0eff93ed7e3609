"""glibc malloc tuning for CPU training (the recipe calls it on CPU unless `cpu_keep_freed_memory: false`)."""
from __future__ import annotations


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel (CPU training).

    By default glibc serves every block over its mmap threshold (at most 32 MiB) with a fresh mmap and
    unmaps it on free, so each training step page-faults (and the kernel zeroes) its large activations
    anew: on 2 cores that is ~10% of a `small` step in system time. With mmap off and no trimming the
    heap grows to the step's peak once and is reused (recipes/bench/mfu.py: MFU 40% -> 44% on `small`).
    The process's RSS then stays at its peak. False where this is not glibc."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False
