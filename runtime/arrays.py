"""Array helpers shared by the stages (a leaf: numpy only): the blocked copy between layouts, the cores that threads
over slabs of an array may use, how such work is split among them and run.

Scanner-sized label maps and images are 50-400 M elements; numpy's copy of a transposed array walks one side
with a large stride and costs 5-10 ns per element (0.7-1.0 s for 512x512x400 uint8). Copying in square blocks of
the two outer axes keeps both sides in the caches (0.14 s for the same array, measured on the 2-core machine).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import numpy as np

_T = TypeVar("_T")
_R = TypeVar("_R")

#: block edge of :func:`reversed_axes` (64 x 64 x the innermost axis: fastest of 16-128 for uint8 and float32)
BLOCK = 64
#: block edge of :func:`copy_blocked` where the destination's innermost axis is a short run (the readers put 32-64
#: planes at a time into a (I, J, K) volume: 16-32 fastest, 0.14-0.21 s for 400 planes of 512x512 in two threads
#: against 0.82 s for numpy's one strided copy)
PLANE_BLOCK = 32


def copy_blocked(dst: np.ndarray, src: np.ndarray, block: int = BLOCK, threads: int = 1) -> None:
    """``dst[...] = src`` (3-D, the same shape; numpy's casting) where the two are laid out differently (one's
    first axis the other's fastest): copied in ``block`` x ``block`` tiles of the first two axes, so both sides
    stay in the caches, by ``threads`` threads each on its own range of the first axis (numpy releases the GIL in
    the copies). The same values as the one assignment, for arrays that do not share memory (numpy buffers an
    overlapping source; blocks copied in turn would not): such a pair is refused."""
    if dst.ndim != 3 or dst.shape != src.shape:
        raise ValueError(f"copy_blocked takes two 3-D arrays of one shape, not {dst.shape} and {src.shape}")
    if np.may_share_memory(dst, src):
        raise ValueError("copy_blocked copies between arrays that do not share memory")
    n_j = dst.shape[1]

    def copy(part: slice) -> None:
        for i0 in range(part.start, part.stop, block):
            i1 = min(i0 + block, part.stop)
            for j0 in range(0, n_j, block):
                dst[i0:i1, j0:j0 + block] = src[i0:i1, j0:j0 + block]

    map_in_threads(copy, even_ranges(dst.shape[0], threads), threads, "edgeseg-copy")


def reversed_axes(array: np.ndarray, block: int = BLOCK, threads: int = 1) -> np.ndarray:
    """C-contiguous copy of a 3-D ``array`` with its axes reversed: ``np.ascontiguousarray(array.transpose(2, 1,
    0))`` with the same values, copied by :func:`copy_blocked`.

    ``reversed_axes(a).T`` is ``a`` laid out in Fortran order (NIfTI's order on disk; for a label map in (I, J, K),
    ``reversed_axes(a)`` holds its (K, J, I) planes, the frames of a DICOM-SEG)."""
    if array.ndim != 3:
        raise ValueError(f"reversed_axes takes a 3-D array, not {array.ndim}-D")
    out = np.empty(array.shape[::-1], dtype=array.dtype)
    copy_blocked(out.T, array, block, threads)
    return out


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def even_ranges(n: int, parts: int) -> list[slice]:
    """``range(n)`` split into at most ``parts`` contiguous ranges of near-equal length, none empty (the shares
    of threads that work on disjoint parts of an array)."""
    k = max(1, min(int(parts), int(n)))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def map_in_threads(fn: Callable[[_T], _R], items: Sequence[_T], threads: int, name: str) -> list[_R]:
    """``[fn(item) for item in items]``, in order, by up to ``threads`` threads named ``name`` (numpy and scipy
    release the GIL in their array work); with one thread or one item, in the caller's thread, without a pool."""
    workers = min(int(threads), len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        return list(pool.map(fn, items))
