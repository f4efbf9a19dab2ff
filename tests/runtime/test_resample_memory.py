"""Preprocessing's spline zoom of a whole series: the same float64 values as ``scipy.ndimage.zoom``, bit for bit,
with one whole-size float64 array instead of a float64 copy, a padded copy and a filtered copy (what made a
512x512x400 series peak at 4 GB)."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from edgeseg.bundle.schema import Normalization, Variant
from edgeseg.runtime import resample
from edgeseg.runtime.resample import Handover, SlabSource, resample_data, resize
from scipy import ndimage


def _scipy_resize(image: np.ndarray, new_shape: tuple[int, ...], order: int) -> np.ndarray:
    """What ``resize`` was: a float64 copy zoomed by scipy, clipped to the input's range above order 1."""
    image = np.asarray(image, dtype=np.float64)
    out = ndimage.zoom(image, [n / o for n, o in zip(new_shape, image.shape)], order=order, mode="nearest",
                       grid_mode=True)
    if order > 1:
        np.clip(out, image.min(), image.max(), out=out)
    return out


@pytest.mark.parametrize("shape,new_shape", [
    ((40, 57, 33), (13, 20, 70)),   # down, down, up
    ((5, 6, 7), (3, 30, 7)),        # an axis left alone
    ((1, 20, 20), (3, 7, 7)),       # one plane
    ((64, 48, 50), (21, 22, 23)),   # a 3 mm network grid from a finer series
])
@pytest.mark.parametrize("order", [1, 3, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resize_equals_scipys_zoom_of_a_float64_copy(shape, new_shape, order, dtype) -> None:
    assert resample._lean_zoom_works()  # this scipy's kernel is reachable and equal: the lean route runs
    rng = np.random.default_rng(sum(shape) + order)
    image = (rng.standard_normal(shape) * 100).astype(dtype)
    want = _scipy_resize(image, new_shape, order)
    np.testing.assert_array_equal(resize(image, new_shape, order), want)
    data = image[None].astype(np.float32)
    got = resample_data(Handover(data.copy()), new_shape, (1, 1, 1), (1, 1, 1), order=order)
    np.testing.assert_array_equal(got, resample_data(data, new_shape, (1, 1, 1), (1, 1, 1), order=order))
    np.testing.assert_array_equal(got[0], _scipy_resize(data[0], new_shape, order).astype(np.float32))


def test_the_zoom_holds_one_float64_working_array(monkeypatch) -> None:
    """tracemalloc sees numpy's buffers. A handed-over float32 image (order 3): the input until it is copied, then
    the padded float64 working array and the small output; scipy's way held the input, a float64 copy, a padded
    copy and a filtered copy. Read slab by slab (:class:`SlabSource`), the working array and a few planes."""
    shape, new_shape = (96, 96, 96), (40, 40, 40)
    padded = np.prod([n + 2 * resample._SPLINE_NPAD for n in shape]) * 8
    small = 4 * np.prod(new_shape) * 8
    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = _scipy_resize(image, new_shape, 3).astype(np.float32)
    monkeypatch.setattr(resample, "usable_cores", lambda: 16)  # the slabs in flight do not grow with the cores
    tracemalloc.start()
    try:
        data = image[None].copy()
        handed = Handover(data)
        del data
        tracemalloc.reset_peak()
        out = resample_data(handed, new_shape, (1, 1, 1), (2.4, 2.4, 2.4), order=3)
        handed_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        lazy = resample_data(SlabSource(image, lambda x: None), new_shape, (1, 1, 1), (2.4, 2.4, 2.4), order=3)
        lazy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out[0], want)
    np.testing.assert_array_equal(lazy[0], want)
    assert handed_peak < image.nbytes + padded + small  # scipy's way: about 3x padded + 3x the input
    assert lazy_peak < padded + small + 16 * image[0].nbytes


def _preprocess_as_before(oriented, part):
    """Preprocessing as it was: normalize the network-order copy in place, resample a float64 copy of it."""
    from edgeseg.runtime.preprocess import nonzero_bbox, normalize, to_network_order
    from edgeseg.runtime.resample import compute_new_shape

    data, spacing = to_network_order(oriented, part)
    bbox, mask = nonzero_bbox(data, fill_holes=any(n.use_mask_for_norm for n in part.normalization))
    data = data[(slice(None), *(slice(a, b) for a, b in bbox))]
    data = normalize(data, part.normalization, mask[tuple(slice(a, b) for a, b in bbox)])
    new_shape = compute_new_shape(data.shape[1:], spacing, part.spacing)
    return _scipy_resize(data[0], new_shape, part.resampling_data.order).astype(np.float32)


@pytest.mark.parametrize("scheme", [
    Normalization("ZScoreNormalization"),
    Normalization("ZScoreNormalization", use_mask_for_norm=True),  # not elementwise: the copy is normalized
    Normalization("CTNormalization", intensity_properties={
        "percentile_00_5": -30.0, "percentile_99_5": 250.0, "mean": 60.5, "std": 41.3}),
    Normalization("RescaleTo01Normalization"),
    Normalization("NoNormalization"),
])
@pytest.mark.parametrize("tf", [(0, 1, 2), (2, 0, 1)])
def test_preprocessing_reads_the_oriented_view_slab_by_slab_to_the_same_bits(scheme, tf) -> None:
    """A flipped, anisotropic series with a zero border (the crop box), on a coarser network grid: the network
    input equals normalizing the copy and resampling it, bit for bit, whichever way the values reach the zoom."""
    from dataclasses import replace

    from edgeseg.runtime.preprocess import orient, preprocess
    from edgeseg.runtime.read.volume import Volume
    from helpers.plan_fakes import make_part

    rng = np.random.default_rng(3)
    array = np.zeros((70, 61, 33), dtype=np.float32)
    array[4:66, 2:59, 3:30] = rng.normal(80.0, 40.0, (62, 57, 27)).astype(np.float32)
    affine = np.diag([-0.8, 0.8, 1.3, 1.0])  # a flipped axis: the oriented image is a view of the array
    volume = Volume(array=array, affine=affine, source=Path("x.nii.gz"), kind="nifti", name="x")
    part = replace(make_part("p", 2.0, tf=tf), normalization=(scheme,))
    oriented = orient(volume, Variant("default", 0, "RAS", None, (part,)))
    assert not oriented.array.flags.owndata  # no float32 copy of the whole series
    got = preprocess(oriented, part).data[0]
    np.testing.assert_array_equal(got, _preprocess_as_before(oriented, part))


@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("shape,new_shape", [((40, 57, 33), (13, 20, 70)), ((1, 20, 20), (3, 7, 7)),
                                             ((3, 30, 31), (2, 61, 9))])
def test_the_zoom_shared_out_among_cores_gives_the_same_bits(monkeypatch, threads, shape, new_shape) -> None:
    """The prefilter's lines and the zoom's output planes shared out among ``threads`` (as for any volume over
    the threshold): scipy's zoom bit for bit, however the ranges fall (more threads than planes included)."""
    monkeypatch.setattr(resample, "_THREADED_ZOOM_VOXELS", 1)
    monkeypatch.setattr(resample, "usable_cores", lambda: threads)
    image = (np.random.default_rng(threads).standard_normal(shape) * 50).astype(np.float32)
    np.testing.assert_array_equal(resize(image, new_shape, 3), _scipy_resize(image, new_shape, 3))


def test_a_one_dimensional_zoom_stays_scipys() -> None:
    line = np.random.default_rng(4).standard_normal(37).astype(np.float32)
    np.testing.assert_array_equal(resize(line, (80,), 3), _scipy_resize(line, (80,), 3))
