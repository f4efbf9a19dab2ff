"""Python's cyclic garbage collector paused while a DICOM object is built and saved.

highdicom and pydicom build a DICOM-SEG or SR out of hundreds of thousands of small objects (a 7555-frame BINARY SEG
makes over 80,000 data elements), nearly all of them alive until the file is written: the collector, triggered by
every few hundred new objects, walks them again and again and frees nothing. Measured on a 2-core machine
(``benchmarks/writers.py``'s series, 320x260x300, 50 structures): 0.4-0.7 s of a 4.0 s BINARY SEG, 0.13 s of a
0.73 s LABELMAP SEG, 0.1 s of a 0.7 s SR. Reference counting still frees everything that is not in a cycle; what
is (about 42,000 objects after a 15820-frame SEG, with or without the pause) is collected by the first collection
after the pause, as it would have been by a later one.

The pause is process-wide (Python has one collector), so it is counted: with several writers at once (the
watcher's worker and its delivery thread), the collector runs again when the last of them is done, and only if it
ran before the first began.
"""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_holders = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Within the block (or the decorated function: ``@gc_paused()``), no automatic cyclic collection."""
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()
