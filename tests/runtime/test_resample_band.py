"""``argmax_resampled``'s band route against the brute-force route it replaces: exactly equal label maps.

The brute-force route (``_argmax_resampled_reference``: every class resampled on the whole grid, rounded to the
logits' dtype, running first-max argmax) is what ``test_resample_reference.py`` checks against nnunetv2 itself.
Here the band route must reproduce it voxel for voxel: random and structured logits, fp16/fp32/fp64, exact and
rounding-made ties, isotropic and separate-z (each axis), odd shapes, up- and downsampling, axes left alone.
"""
from __future__ import annotations

import numpy as np
import pytest
from edgeseg.runtime import resample
from edgeseg.runtime.resample import _argmax_resampled_reference, argmax_resampled
from scipy import ndimage

ISO = ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0))

# (input shape, output shape, current spacing, new spacing, force_separate_z)
GRIDS = [
    ((13, 17, 11), (29, 37, 23), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), None),        # upsampling ~2.2x, odd shapes
    ((31, 27, 33), (17, 14, 19), (1.0, 1.0, 1.0), (1.8, 1.9, 1.7), None),        # downsampling
    ((20, 21, 22), (25, 21, 31), (1.25, 1.0, 1.4), (1.0, 1.0, 1.0), None),       # one axis left alone
    ((21, 26, 32), (21, 33, 40), (1.5, 1.5, 1.5), (1.5, 1.19, 1.19), None),      # the clinical case in small
    ((5, 19, 23), (23, 31, 37), (5.0, 1.0, 1.0), (1.0, 0.6, 0.6), None),         # separate z: axis 0, upsampled
    ((19, 6, 23), (30, 27, 30), (1.0, 4.5, 1.0), (0.6, 1.0, 0.8), None),         # separate z: axis 1
    ((23, 19, 7), (15, 26, 7), (0.8, 1.0, 4.0), (1.2, 0.7, 4.0), None),          # separate z: axis 2, z kept
    ((9, 16, 18), (5, 25, 29), (4.0, 1.0, 1.0), (7.0, 0.6, 0.6), None),          # separate z: z downsampled
    ((11, 13, 12), (22, 27, 23), (2.0, 1.0, 1.0), (1.0, 0.5, 0.5), True),        # forced separate z
    ((6, 13, 12), (15, 27, 23), (5.0, 1.0, 1.0), (2.0, 0.5, 0.5), False),        # forced joint resampling
    ((1, 12, 9), (1, 24, 17), (3.0, 1.0, 1.0), (3.0, 0.5, 0.5), None),           # a single slice
    ((8, 2, 9), (16, 5, 17), (1.0, 1.0, 1.0), (0.5, 0.4, 0.5), None),            # two samples along an axis
]


def _blobs(classes: int, shape: tuple[int, ...], rng: np.random.Generator, sigma: float = 2.5) -> np.ndarray:
    out = np.empty((classes, *shape), dtype=np.float64)
    for c in range(classes):
        out[c] = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="nearest")
    return out * (8.0 / max(float(np.abs(out).max()), 1e-9))


def _cases(shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    big = _blobs(5, shape, rng)
    big[0] += 3.0  # a dominant background, as a segmentation network's
    return {
        "noise": rng.standard_normal((4, *shape)) * 3,
        "blobs": big,
        # few distinct values: exact ties everywhere, before and after interpolation
        "ties": rng.integers(0, 3, (5, *shape)).astype(np.float64),
        # large logits one or two fp16 steps apart: rounding to fp16 makes new ties
        "fp16_steps": 1000.0 + 0.5 * rng.integers(0, 3, (4, *shape)),
        # class 2 wins everywhere by exactly one fp16 step over class 0 near 64: the margin test must refuse it
        "one_ulp": np.stack([np.full(shape, 64.0), np.full(shape, 60.0), np.full(shape, 64.0625)])
        + np.where(rng.random(shape) < 0.5, 0.0, 0.0625)[None],
        # two classes equal everywhere (first wins) next to blobs
        "duplicate": np.concatenate([big[:2], big[1:2], big[2:]]),
    }


def _check(logits: np.ndarray, new_shape, cur, new, force, **kw) -> np.ndarray:
    ref = _argmax_resampled_reference(logits, new_shape, cur, new, 1, 0, force)
    ours = argmax_resampled(logits, new_shape, cur, new, 1, 0, force, **kw)
    assert ours.dtype == ref.dtype and ours.shape == tuple(new_shape)
    if not np.array_equal(ours, ref):
        bad = np.argwhere(ours != ref)
        raise AssertionError(f"{len(bad)} voxels differ, first at {bad[0].tolist()}: ours {ours[tuple(bad[0])]}, "
                             f"reference {ref[tuple(bad[0])]} ({resample.last_route})")
    return ours


@pytest.fixture
def band_always(monkeypatch):
    """Take the band route however wide the band (white noise would otherwise go brute force)."""
    monkeypatch.setattr(resample, "_DENSE_BAND", 2.0)


@pytest.mark.parametrize("grid", GRIDS, ids=[f"{g[0]}->{g[1]}" for g in GRIDS])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_band_route_equals_brute_force(band_always, grid, dtype):
    shape, new_shape, cur, new, force = grid
    for name, logits in _cases(shape, seed=hash((shape, new_shape)) % 2**32).items():
        x = logits.astype(dtype)
        if name == "fp16_steps" and dtype == np.float32:
            x = x.astype(np.float16).astype(np.float32)  # fp16 values in float32, as the runtime hands them over
        _check(x, new_shape, cur, new, force)
        assert resample.last_route["route"] == "band", name


def test_float64_logits_round_like_the_reference(band_always):
    rng = np.random.default_rng(3)
    x = _blobs(4, (12, 15, 14), rng) + rng.standard_normal((4, 12, 15, 14)) * 1e-7  # ties only after float32
    _check(x, (25, 31, 20), (2.0, 2.0, 2.0), (1.0, 1.0, 1.5), None)
    assert resample.last_route["route"] == "band"


def test_structured_logits_take_the_band_route_and_stay_exact():
    """No forcing: on segmentation-like logits the band is thin and the result the reference's."""
    rng = np.random.default_rng(5)
    shape = (30, 34, 28)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    logits = [np.full(shape, 1.0)]
    for _ in range(6):
        c, r = rng.uniform(-0.5, 0.5, 3), rng.uniform(0.2, 0.45, 3)
        logits.append(8 * (1 - ((z - c[0]) / r[0]) ** 2 - ((y - c[1]) / r[1]) ** 2 - ((x - c[2]) / r[2]) ** 2))
    arr = np.array(logits).astype(np.float16)
    for new_shape, cur, new in [((61, 70, 57), (1.5, 1.5, 1.5), (0.75, 0.73, 0.74)),
                                ((30, 43, 36), (1.5, 1.5, 1.5), (1.5, 1.19, 1.19))]:
        _check(arr, new_shape, cur, new, None)
        assert resample.last_route["route"] == "band"
        assert resample.last_route["band_fraction"] < 0.3
        # in the band only the classes that can win there are interpolated (two or three of the seven)
        assert 1 / 7 <= resample.last_route["class_fraction"] < 0.5
        _check(arr.astype(np.float32), new_shape, cur, new, None, threads=1)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_class_that_wins_only_between_samples_is_kept(band_always, dtype):
    """Class 0 is the argmax at no sample, yet wins halfway between them (classes 1 and 2 take turns at 6 along
    the last axis, class 0 is 5 everywhere): the classes skipped in the band must only be those that cannot win
    (every sample of another class above all of theirs), so class 0 still appears where the reference has it."""
    shape = (6, 7, 9)
    x = np.arange(shape[2]) % 2
    logits = np.stack([np.full(shape, 5.0), np.broadcast_to(6.0 * (x == 0), shape),
                       np.broadcast_to(6.0 * (x == 1), shape)]).astype(dtype)
    labels = _check(logits, (12, 14, 18), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), None)
    assert resample.last_route["route"] == "band"
    assert {0, 1} <= set(np.unique(labels).tolist())  # class 0 between the samples, class 1 at the clamped edge


def test_many_classes_give_uint16_labels(band_always):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((300, 6, 7, 5)) + np.arange(300)[:, None, None, None] * 0.01).astype(np.float16)
    labels = _check(x, (11, 13, 9), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), None)
    assert labels.dtype == np.uint16 and labels.max() > 255


def test_white_noise_falls_back_to_brute_force():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 10, 11, 12)).astype(np.float16)
    _check(x, (20, 22, 25), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), None)
    assert resample.last_route["route"] == "reference"


@pytest.mark.parametrize("order,order_z,cur", [(3, 0, (2.0, 2.0, 2.0)), (1, 1, (5.0, 1.0, 1.0)),
                                               (0, 0, (2.0, 2.0, 2.0))])
def test_other_orders_use_the_reference(order, order_z, cur):
    x = _blobs(3, (6, 8, 7), np.random.default_rng(1)).astype(np.float16)
    new = tuple(s / 2 for s in cur)
    target = resample.compute_new_shape(x.shape[1:], cur, new)
    ref = _argmax_resampled_reference(x, target, cur, new, order, order_z)
    np.testing.assert_array_equal(argmax_resampled(x, target, cur, new, order, order_z), ref)
    assert resample.last_route["route"] == "reference"


def test_non_finite_logits_use_the_reference():
    x = _blobs(3, (6, 8, 7), np.random.default_rng(2)).astype(np.float32)
    x[1, 2, 3, 4] = np.inf
    ref = _argmax_resampled_reference(x, (12, 16, 14), (2.0,) * 3, (1.0,) * 3)
    np.testing.assert_array_equal(argmax_resampled(x, (12, 16, 14), (2.0,) * 3, (1.0,) * 3), ref)
    assert resample.last_route["route"] == "reference"


def test_progress_reaches_the_end():
    seen: list[tuple[int, int]] = []
    x = _blobs(3, (10, 12, 9), np.random.default_rng(4)).astype(np.float16)
    argmax_resampled(x, (19, 23, 17), (2.0,) * 3, (1.0,) * 3, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]


@pytest.mark.reference
@pytest.mark.parametrize("cur,new", [((2.0, 2.0, 2.0), (1.0, 0.9, 1.1)), ((5.0, 1.0, 1.0), (1.0, 0.7, 0.7))])
def test_near_ties_match_nnunetv2(cur, new):
    """fp16 logits whose resampled values tie after nnU-Net's fp16 rounding: nnunetv2's own argmax."""
    nnunet = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    rng = np.random.default_rng(11)
    x = (1000.0 + 0.5 * rng.integers(0, 3, (4, 7, 12, 11))).astype(np.float16)
    target = nnunet.compute_new_shape(x.shape[1:], cur, new)
    ref = nnunet.resample_data_or_seg_to_shape(x, target, cur, new, is_seg=False, order=1, order_z=0,
                                               force_separate_z=None).argmax(0)
    np.testing.assert_array_equal(argmax_resampled(x, target, cur, new, 1, 0), ref)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_rounding_tie_across_a_binade(dtype):
    """Class 1 beats class 0 at every sample (2048 > 2047, 2050 > 2048), yet halving the grid gives 2047.5 and
    2049, which fp16 rounds to 2048 both: the reference's first maximum is class 0. The shortcut must not fire
    (its margin test) and the band must reproduce the tie; in float32 there is no tie and class 1 wins."""
    shape = (6, 5, 16)
    odd = (np.arange(16) % 2 == 1)[None, None, :] & np.ones(shape, dtype=bool)
    c0 = np.where(odd, 2048.0, 2047.0)
    c1 = np.where(odd, 2050.0, 2048.0)
    x = np.stack([c0, c1, np.zeros(shape)]).astype(dtype)
    labels = _check(x, (6, 5, 8), (1.0, 1.0, 1.0), (1.0, 1.0, 2.0), None)
    assert (labels == (0 if dtype == np.float16 else 1)).all()
