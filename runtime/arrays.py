"""Array helpers shared by the stages (a leaf: numpy only): the blocked transposed copy, the cores that threads
over slabs of an array may use, and how such work is split among them.

Scanner-sized label maps and images are 50-400 M elements; numpy's copy of a transposed array walks one side
with a large stride and costs 5-10 ns per element (0.7-1.0 s for 512x512x400 uint8). Copying in square blocks of
the two outer axes keeps both sides in the caches (0.14 s for the same array, measured on the 2-core machine).
"""
from __future__ import annotations

import os

import numpy as np

#: block edge of :func:`reversed_axes` (64 x 64 x the innermost axis: fastest of 16-128 for uint8 and float32)
BLOCK = 64


def reversed_axes(array: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """C-contiguous copy of a 3-D ``array`` with its axes reversed: ``np.ascontiguousarray(array.transpose(2, 1,
    0))`` with the same values, copied in ``block`` x ``block`` tiles of the first two axes.

    ``reversed_axes(a).T`` is ``a`` laid out in Fortran order (NIfTI's order on disk; for a label map in (I, J, K),
    ``reversed_axes(a)`` holds its (K, J, I) planes, the frames of a DICOM-SEG)."""
    if array.ndim != 3:
        raise ValueError(f"reversed_axes takes a 3-D array, not {array.ndim}-D")
    n_i, n_j, _ = array.shape
    out = np.empty(array.shape[::-1], dtype=array.dtype)
    for i0 in range(0, n_i, block):
        for j0 in range(0, n_j, block):
            out[:, j0:j0 + block, i0:i0 + block] = array[i0:i0 + block, j0:j0 + block, :].T
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
