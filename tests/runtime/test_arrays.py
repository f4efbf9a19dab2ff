"""The blocked copy between layouts (runtime/arrays.py: copy_blocked, under reversed_axes and both readers'
placement of planes): the values of numpy's one assignment, whatever the block, threads and shape."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from edgeseg.runtime.arrays import copy_blocked, reversed_axes


@pytest.mark.parametrize("shape,block,threads", [
    ((1, 1, 1), 32, 1), ((5, 130, 7), 16, 2), ((129, 65, 3), 32, 3), ((70, 70, 70), 64, 64), ((33, 17, 9), 1, 2),
])
def test_copy_blocked_is_the_assignment_casts_included(shape: tuple[int, int, int], block: int,
                                                       threads: int) -> None:
    rng = np.random.default_rng(sum(shape) + block)
    src = np.asfortranarray(rng.integers(-2000, 4000, shape).astype(np.int16))  # a NIfTI slab's layout
    big = np.full((shape[0], shape[1], shape[2] + 6), np.nan, np.float32)      # the volume, K its fastest axis
    dst = big[:, :, 3:3 + shape[2]]
    copy_blocked(dst, src, block, threads)
    expected = np.full_like(big, np.nan)
    expected[:, :, 3:3 + shape[2]] = src
    assert big.tobytes() == expected.tobytes()  # the same bits, nothing outside the destination touched
    assert not [t for t in threading.enumerate() if t.name.startswith("edgeseg-copy")]


def test_copy_blocked_refuses_shapes_that_differ() -> None:
    with pytest.raises(ValueError, match="one shape"):
        copy_blocked(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="3-D"):
        copy_blocked(np.zeros((2, 3)), np.zeros((2, 3)))
    a = np.arange(27.0).reshape(3, 3, 3)
    with pytest.raises(ValueError, match="share memory"):  # numpy would buffer it; blocks in turn would not
        copy_blocked(a, a.transpose(2, 1, 0))


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_reversed_axes_in_threads_is_the_transposed_copy(threads: int) -> None:
    a = np.random.default_rng(threads).integers(0, 255, (70, 129, 9)).astype(np.uint8)
    got = reversed_axes(a, threads=threads)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, np.ascontiguousarray(a.transpose(2, 1, 0)))
