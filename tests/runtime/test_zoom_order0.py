"""Order-0 zoom back to the input grid as a gather (issue 21): bit-identical to ``scipy.ndimage.zoom(order=0)``
and to the zoom + ``apply_orientation`` + contiguous copy that ``to_input_grid`` did before."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from edgeseg.bundle.schema import PreResample
from edgeseg.runtime import resample
from edgeseg.runtime.postprocess import to_input_grid
from edgeseg.runtime.preprocess import Oriented
from edgeseg.runtime.resample import order0_gather_applies, order0_zoom_indices, take_grid, zoom_to_shape

DTYPES = (np.uint8, np.uint16, np.int8, np.int16, np.int32, np.uint32)


def _scipy(array: np.ndarray, new_shape, mode: str) -> np.ndarray:
    """What ``zoom_to_shape(order=0)`` was: ``ndimage.zoom`` with new/old factors (scipy's output shape is the
    target one here; the fix-up has its own test)."""
    return ndimage.zoom(array, [n / o for n, o in zip(new_shape, array.shape)], order=0, mode=mode)


def _labels(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("mode", ["nearest", "constant"])
def test_random_shapes_are_bit_identical_to_scipy(mode):
    rng = np.random.default_rng(21)
    with_cval = 0
    for case in range(400):
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(s) for s in rng.integers(1, 30, ndim))   # 1-voxel axes included
        new = tuple(int(s) for s in rng.integers(1, 60, ndim))     # up and down, odd and even
        dtype = DTYPES[case % len(DTYPES)]
        labels = _labels(rng, shape, dtype)
        assert order0_gather_applies(labels, new)
        ours = zoom_to_shape(labels, new, order=0, mode=mode)
        theirs = _scipy(labels, new, mode)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == new, (shape, new, dtype)
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{shape} -> {new} {dtype.__name__} {mode}")
        assert ours.flags.c_contiguous
        with_cval += any((idx < 0).any() for idx in order0_zoom_indices(shape, new, mode))
    if mode == "constant":   # scipy's last coordinate lands just past the edge for some lengths: cval planes
        assert with_cval > 0


@pytest.mark.parametrize("mode", ["nearest", "constant"])
@pytest.mark.parametrize("old,new", [(8, 26), (15, 51), (22, 20), (26, 12), (1, 7), (7, 1), (1, 1), (9, 9)])
def test_known_cval_lengths_and_one_voxel_axes(mode, old, new):
    """(8, 26) ... (26, 12): lengths where 'constant' puts cval in the last plane; 1-voxel axes both ways."""
    rng = np.random.default_rng(old * 100 + new)
    for shape, target in [((old, 5, 3), (new, 11, 2)), ((4, old, 6), (9, new, 6)), ((3, 2, old), (1, 4, new))]:
        labels = _labels(rng, shape, np.uint8) | 1   # no zero labels: a cval plane shows
        np.testing.assert_array_equal(zoom_to_shape(labels, target, order=0, mode=mode), _scipy(labels, target, mode))
    if mode == "constant" and (old, new) in [(8, 26), (15, 51), (22, 20), (26, 12)]:
        assert order0_zoom_indices([old], [new], mode)[0][-1] == -1


def test_totalsegmentator_sized_grid():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 51, size=(86, 86, 67), dtype=np.uint8)
    for mode in ("nearest", "constant"):
        np.testing.assert_array_equal(zoom_to_shape(labels, (256, 256, 100), order=0, mode=mode),
                                      _scipy(labels, (256, 256, 100), mode))


def test_take_grid_zeroes_minus_one_planes():
    rng = np.random.default_rng(3)
    array = rng.integers(1, 255, size=(5, 6, 7), dtype=np.uint8)
    indices = [rng.integers(-1, n, size=m) for n, m in zip(array.shape, (9, 4, 11))]
    padded = np.zeros(tuple(n + 1 for n in array.shape), dtype=array.dtype)
    padded[:5, :6, :7] = array                    # index -1 reads the zero plane at the end
    expected = padded[np.ix_(*indices)]
    assert any((idx < 0).any() for idx in indices)
    got = take_grid(array, indices)
    np.testing.assert_array_equal(got, expected)
    assert got.flags.c_contiguous


def test_shape_fix_up_is_kept(monkeypatch):
    """Where scipy's rounded output shape misses the target, the gather writes 0 past scipy's output as the
    fix-up does (forced here by a zoom that returns one sample fewer on every axis)."""
    real = ndimage.zoom

    def short_zoom(array, zoom, **kw):
        out = real(array, zoom, **kw)
        return out[tuple(slice(0, max(n - 1, 1)) for n in out.shape)]

    monkeypatch.setattr(resample.ndimage, "zoom", short_zoom)
    labels = np.random.default_rng(1).integers(1, 9, size=(4, 5, 6), dtype=np.uint8)
    ours = zoom_to_shape(labels, (9, 3, 13), order=0, mode="nearest")
    reference = resample._zoom_to_shape_reference(labels, (9, 3, 13), order=0, mode="nearest")
    assert ours.shape == (9, 3, 13)
    np.testing.assert_array_equal(ours, reference)
    assert (ours[-1] == 0).all() and (ours[:-1, :-1, :-1] != 0).all()


@pytest.mark.parametrize("labels,order", [(np.arange(60, dtype=np.int64).reshape(3, 4, 5), 0),   # beyond float64
                                          (np.arange(60, dtype=np.float32).reshape(3, 4, 5), 0),
                                          (np.arange(60, dtype=np.uint8).reshape(3, 4, 5), 1)])
def test_other_orders_and_dtypes_keep_scipy(labels, order):
    assert not (order == 0 and order0_gather_applies(labels, (7, 5, 9)))
    np.testing.assert_array_equal(zoom_to_shape(labels, (7, 5, 9), order=order, mode="nearest"),
                                  ndimage.zoom(labels, [7 / 3, 5 / 4, 9 / 5], order=order, mode="nearest"))


def _orientations() -> list[np.ndarray]:
    out = []
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((1, -1), repeat=3):
            out.append(np.array([[p, f] for p, f in zip(perm, flips)], dtype=float))
    return out


def _to_input_grid_before(labels: np.ndarray, oriented: Oriented) -> np.ndarray:
    """``to_input_grid`` before issue 21: scipy's zoom, nibabel's ``apply_orientation``, a contiguous copy."""
    import nibabel as nib

    pre = oriented.pre_resample
    assert pre is not None
    labels = resample._zoom_to_shape_reference(labels, oriented.input_shape, pre.order_back, pre.mode)
    if oriented.ornt is not None:
        back = nib.orientations.ornt_transform(np.array([[0, 1], [1, 1], [2, 1]], dtype=float), oriented.ornt)
        labels = nib.orientations.apply_orientation(labels, back)
    return np.ascontiguousarray(labels)


@pytest.mark.parametrize("mode", ["nearest", "constant"])
@pytest.mark.parametrize("order_back", [0, 1])
def test_to_input_grid_folds_the_orientation_into_the_gather(mode, order_back):
    rng = np.random.default_rng(7)
    pre = PreResample((1.5, 1.5, 1.5), order=1, cast="int32", mode=mode, order_back=order_back)
    for k, ornt in enumerate([None, *_orientations()]):
        low = tuple(int(s) for s in rng.integers(1, 9, 3))
        input_shape = tuple(int(s) for s in rng.integers(1, 20, 3))   # the zoom's target (canonical order)
        labels = _labels(rng, low, (np.uint8, np.uint16, np.int32)[k % 3])
        oriented = Oriented(np.zeros(low, np.float32), (1.5, 1.5, 1.5), ornt, input_shape, pre)  # type: ignore[arg-type]
        ours = to_input_grid(labels, oriented)
        before = _to_input_grid_before(labels, oriented)
        assert ours.shape == before.shape
        assert ours.dtype == before.dtype and ours.flags.c_contiguous
        np.testing.assert_array_equal(ours, before, err_msg=f"{low} -> {input_shape}, ornt {ornt}")
