"""numpy's transparent-huge-page advice is switched off before numpy is imported (``NUMPY_MADVISE_HUGEPAGE=0``).

numpy asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every array of 4 MB or more. On
kernels whose ``/sys/kernel/mm/transparent_hugepage/defrag`` is ``madvise`` (the common default) a page fault in
such an array may stall on memory compaction until a 2 MB page is free. A series allocates several arrays of
hundreds of MB (the input, the network grid, the sliding window's fp16 accumulator of every class), each touched
for the first time while it is filled, so the stalls land inside the time budget and vary from run to run: the
first touch of a 400 MB array took 0.05-0.9 s in fresh processes, 0.13 s steadily with 4 KB pages. Measured on
the 2-core machine (``benchmarks/sliding_window_tile.py``, 51-class 128^3 INT8 tiles; docs/benchmarks.md): the
first window of a process 0.72 s per tile with huge pages, 0.61 s without; the same once the memory is warm.

This is numpy's documented start-up switch ("Global state": read once when numpy is imported), so it is set as a
default that a user's own ``NUMPY_MADVISE_HUGEPAGE`` overrides. ``edgeseg/__init__.py`` calls
:func:`numpy_small_pages` before any edgeseg module imports numpy; a host process that imported numpy first keeps
its own setting (logged at DEBUG). Tested by ``tests/test_memory_advice.py``.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

ENV = "NUMPY_MADVISE_HUGEPAGE"


def numpy_small_pages() -> None:
    """Default ``NUMPY_MADVISE_HUGEPAGE`` to ``0`` for this process (and its children) while numpy is not yet
    imported; a value already set is kept. Idempotent."""
    if "numpy" in sys.modules:
        log.debug("numpy was imported before edgeseg: its huge-page advice is left as it is")
        return
    os.environ.setdefault(ENV, "0")
