"""Freed heap memory handed back to the operating system between the stages of a series.

glibc's ``malloc`` gives every thread that allocates its own arena and keeps what the thread frees there for the
next allocation *of that arena*. The stages that use the process's cores (DICOM decoding and copying, resampling
back class by class) free hundreds of megabytes in their workers' arenas; the next stage allocates from the main
thread's arena and the process grows by that much again. Measured on the 512x512x400 DICOM series
(``benchmarks/series_scaling.py``'s): 720 MB resident after reading, 514 MB after ``malloc_trim(0)``, the float32
volume being 400 MB of it.

:func:`release_freed_memory` is ``malloc_trim(0)`` where the C library is glibc (Linux) and nothing elsewhere
(Windows' and macOS's allocators return large blocks by themselves). It frees nothing that is in use, only pages of
free chunks; it took under a millisecond after that read here (what a later stage allocates again costs its page
faults, as any fresh memory does). An allocator preloaded in glibc's place (``LD_PRELOAD`` jemalloc or tcmalloc)
keeps its own pages: the call then does nothing.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import platform
from typing import Any, Callable

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], Any] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # a static or unusual build: nothing to trim with
        log.debug("malloc_trim is not available: freed heap memory stays with the process")
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int  # int malloc_trim(size_t pad)
    return trim


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim(0)``, all arenas); True if it could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
