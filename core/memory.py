"""Process-level memory settings for inference commands."""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def single_malloc_arena() -> bool:
    """Ask glibc to serve every thread from one malloc arena (`mallopt(M_ARENA_MAX, 1)`), before the threads
    allocate. With one arena per thread, full-resolution NeRCo inference on 2 threads kept 60-120 MiB of freed
    memory in the extra arenas, differently from run to run (working memory 186-295 MiB at 600x400 against a
    steady 172 MiB with one arena, `docs/benchmarks.md`). True if set; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_ARENA_MAX, 1))
