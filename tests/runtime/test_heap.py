"""runtime/heap.py: freed heap memory handed back to the OS between stages."""
from __future__ import annotations

import os
import platform
import threading

import pytest

from edgeseg.runtime.heap import release_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and not os.environ.get("LD_PRELOAD")


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc_trim (no preloaded allocator): elsewhere it does nothing")
def test_memory_a_worker_thread_freed_goes_back_to_the_os():
    """What the read's workers leave: a thread's arena with 160 MB of freed 64 KiB buffers between small live ones
    (so the arena cannot shrink from its top by itself); released, the process is that much smaller."""
    kept: list[bytearray] = []

    def work() -> None:
        freed = []
        for _ in range(2560):
            freed.append(bytearray(64 * 1024))  # under glibc's mmap threshold: from the thread's arena
            kept.append(bytearray(512))  # a live neighbour after each
        del freed

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    before = _rss_mb()
    assert release_freed_memory()
    after = _rss_mb()
    assert before - after > 100, (before, after)
    assert len(kept) == 2560


def test_it_is_a_no_op_where_there_is_no_glibc(monkeypatch):
    from edgeseg.runtime import heap

    heap._malloc_trim.cache_clear()
    monkeypatch.setattr(heap.platform, "system", lambda: "Windows")
    try:
        assert release_freed_memory() is False
    finally:
        heap._malloc_trim.cache_clear()
