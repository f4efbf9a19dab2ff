"""Resampling with nnU-Net's semantics, on numpy/scipy only (no torch, no scikit-image).

nnU-Net resamples images with a cubic spline (order 3) and probabilities/logits with order 1, using
scikit-image's ``resize(..., mode="edge", anti_aliasing=False)`` (a ``scipy.ndimage.zoom`` with
``grid_mode=True`` and output clipped to the input's range). When the spacing is anisotropic (max/min > 3) the
low-resolution axis is handled separately: 2-D resizes in-plane, then order ``order_z`` (0) along that axis.
Arrays here are (C, *spatial) in the network's axis order.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from edgeseg.runtime.arrays import even_ranges, map_in_threads, usable_cores


def compute_new_shape(old_shape: Sequence[int], old_spacing: Sequence[float],
                      new_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's rule: round(old_spacing / new_spacing * old_shape) per axis."""
    return tuple(int(round(s / n * k)) for s, n, k in zip(old_spacing, new_spacing, old_shape))


def _lowres_axis(spacing: Sequence[float]) -> list[int]:
    arr = np.asarray(spacing, dtype=float)
    return [int(i) for i in np.where(max(arr) / arr == 1)[0]]


def separate_z_axis(force_separate_z: bool | None, current_spacing: Sequence[float],
                    new_spacing: Sequence[float], threshold: float = 3.0) -> int | None:
    """The axis to resample separately with ``order_z``, or None (nnU-Net's ``determine_do_sep_z_and_axis``)."""
    axis: list[int] | None
    if force_separate_z is not None:
        axis = _lowres_axis(current_spacing) if force_separate_z else None
    elif max(current_spacing) / min(current_spacing) > threshold:
        axis = _lowres_axis(current_spacing)
    elif max(new_spacing) / min(new_spacing) > threshold:
        axis = _lowres_axis(new_spacing)
    else:
        axis = None
    if axis is None or len(axis) != 1:
        return None
    return axis[0]


def resize(image: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """scikit-image ``resize(image, new_shape, order, mode='edge', anti_aliasing=False, clip=True)`` for float
    input: a grid-mode spline zoom with edge extension, clipped to the input's value range. Returns float64.

    float32 input is read as it is (scipy converts each value to float64 exactly): no float64 copy of it."""
    return _resize_taken(Handover(image), new_shape, order)


class Handover:
    """An array passed on with its caller's last reference (the caller keeps none): the resampling drops it as soon
    as its values are in its float64 working array, so that a whole volume's float32 and float64 copies do not
    coexist (:func:`resample_data`)."""

    def __init__(self, array: np.ndarray) -> None:
        self._array: np.ndarray | None = array
        self.shape = tuple(int(s) for s in array.shape)

    def take(self) -> np.ndarray:
        array, self._array = self._array, None
        assert array is not None, "an array handed over is taken once"
        return array

    def fill(self, out: np.ndarray) -> tuple[float, float]:
        """Copy the array into ``out`` (dropping it) and return its (min, max)."""
        array = self.take()
        out[...] = array
        return array.min(), array.max()


class SlabSource:
    """A one-channel float32 image that is never whole in memory: ``view`` (e.g. the input volume's, in the
    network's order and crop) whose values, a few planes at a time, are cast to float32 and passed through
    ``transform`` (in place; the normalization) on their way into the zoom's float64 working array. Only the
    lean spline zoom reads it so (:func:`resample_data`); elsewhere it is materialised first."""

    #: slabs read at once (one per thread)
    SLABS_IN_FLIGHT = 2

    def __init__(self, view: np.ndarray, transform: Callable[[np.ndarray], None], planes: int = 8) -> None:
        self.view = view
        self.transform = transform
        self.planes = max(1, int(planes))
        self.shape = tuple(int(s) for s in view.shape)

    def fill(self, out: np.ndarray) -> tuple[float, float]:
        """Write the transformed float32 values into ``out`` (same shape) and return their (min, max). The slabs
        are shared out among at most :attr:`SLABS_IN_FLIGHT` of the process's cores (numpy's copies and the
        elementwise transform release the GIL; each thread holds one slab, so the memory bound does not grow with
        the machine's cores)."""

        def slab(z: int) -> tuple[Any, Any]:
            values = np.array(self.view[z:z + self.planes], dtype=np.float32)
            self.transform(values)
            out[z:z + self.planes] = values
            return values.min(), values.max()

        threads = min(usable_cores(), self.SLABS_IN_FLIGHT)
        extremes = map_in_threads(slab, range(0, self.shape[0], self.planes), threads, "edgeseg-fill")
        if not extremes:
            raise ValueError("an empty image has no values to resample")
        return min(lo for lo, _ in extremes), max(hi for _, hi in extremes)

    def materialize(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        self.fill(out)
        return out


def _resize_taken(source: Handover | SlabSource, new_shape: Sequence[int], order: int) -> np.ndarray:
    """:func:`resize` of the image ``source`` holds (a handed-over array is dropped once copied)."""
    if isinstance(source, SlabSource) and (order <= 1 or not _lean_zoom_works()):
        source = Handover(source.materialize())
    if isinstance(source, Handover):
        image = source.take()
        if image.dtype not in (np.float32, np.float64):
            image = np.asarray(image, dtype=np.float64)  # scipy reads no float16; other types: as before
        zoom = [n / o for n, o in zip(new_shape, image.shape)]
        if order <= 1:  # no prefilter, and lower orders cannot leave the input's range
            return ndimage.zoom(image, zoom, output=np.float64, order=order, mode="nearest", grid_mode=True)
        if not _lean_zoom_works():
            out = ndimage.zoom(image, zoom, output=np.float64, order=order, mode="nearest", grid_mode=True)
            np.clip(out, image.min(), image.max(), out=out)
            return out
        source = Handover(image)
        del image
    zoom = [n / o for n, o in zip(new_shape, source.shape)]
    out, lo, hi = _spline_zoom_nearest(source, zoom, order)
    np.clip(out, lo, hi, out=out)
    return out


#: scipy's zoom pads by this much before its spline prefilter in mode "nearest" (``_prepad_for_spline_filter``)
_SPLINE_NPAD = 12


def _spline_zoom_nearest(source: Handover | SlabSource, zoom: Sequence[float], order: int,
                         threads: int | None = None) -> tuple[np.ndarray, float, float]:
    """``ndimage.zoom(image, zoom, output=np.float64, order=order, mode="nearest", grid_mode=True)`` bit for bit
    (``order`` >= 2; ``image`` float32 or float64, what ``source`` holds) and the image's (min, max), with one
    whole-size array instead of three: scipy pads a copy of the input (in its dtype), spline-filters that into a
    new float64 array and zooms from it; here the input is written once into a float64 array padded the same way
    (edge values), filtered in place axis by axis (scipy's own ``spline_filter1d``, as its ``spline_filter`` does
    after the first axis) and zoomed by scipy's own zoom kernel with the same padding offset. That kernel is
    private to scipy: :func:`_lean_zoom_works` checks this function against ``ndimage.zoom`` before it is used.
    The filtering (each axis' lines) and the zoom (ranges of output planes) run on the process's cores: measured on
    the 2-core machine for a 200x512x512 float64 volume, the three axes' filters 1.32 -> 0.68 s, the zoom 0.38 ->
    0.25 s, the same bits.
    """
    from scipy.ndimage import _nd_image, _ni_support

    kernel = _nd_image.zoom_shift
    mode = _ni_support._extend_mode_to_code("nearest")
    zoom = [float(z) for z in zoom]
    shape = source.shape
    output_shape = tuple(int(round(n * z)) for n, z in zip(shape, zoom))  # as ndimage.zoom rounds it
    npad = _SPLINE_NPAD
    padded = np.empty(tuple(n + 2 * npad for n in shape), dtype=np.float64)
    lo, hi = source.fill(padded[tuple(slice(npad, npad + n) for n in shape)])
    for axis, n in enumerate(shape):  # np.pad(mode="edge"), axis after axis
        low = [slice(None)] * len(shape)
        edge = [slice(None)] * len(shape)
        low[axis], edge[axis] = slice(0, npad), slice(npad, npad + 1)
        padded[tuple(low)] = padded[tuple(edge)]
        low[axis], edge[axis] = slice(npad + n, None), slice(npad + n - 1, npad + n)
        padded[tuple(low)] = padded[tuple(edge)]
    out_shape = np.array(output_shape)
    factors = np.ascontiguousarray(np.divide(np.array(shape), out_shape, out=np.ones(len(shape), dtype=np.float64),
                                             where=out_shape != 0))
    out = np.empty(output_shape, dtype=np.float64)
    if threads is None:
        threads = usable_cores() if padded.size >= _THREADED_ZOOM_VOXELS else 1
    if padded.ndim < 2:  # one line: nothing to share out
        threads = 1
    for axis in range(len(shape)):
        # along ``axis`` each line is filtered on its own: the lines are shared out by ranges of another axis
        # (scipy releases the GIL; the same values)
        across = 1 if axis == 0 and padded.ndim > 1 else 0

        def prefilter(part: slice, _axis: int = axis, _across: int = across) -> None:
            view = padded[(slice(None),) * _across + (part,)]
            ndimage.spline_filter1d(view, order, _axis, output=view, mode="nearest")

        map_in_threads(prefilter, even_ranges(padded.shape[across], threads), threads, "edgeseg-zoom")

    def interpolate(part: slice) -> None:
        # output planes part.start... of axis 0: the kernel's shift is added to each output index before the
        # zoom, so an integer shift gives these planes the coordinates the whole zoom gives them
        shift = np.zeros(len(shape), dtype=np.float64)
        shift[0] = part.start
        kernel(padded, factors, shift, out[part], order, mode, 0.0, npad, True)

    map_in_threads(interpolate, even_ranges(output_shape[0], threads), threads, "edgeseg-zoom")
    return out, lo, hi


#: volumes from this size on are prefiltered and zoomed by the process's cores (smaller ones in the caller's thread)
_THREADED_ZOOM_VOXELS = 1 << 20


_LEAN_ZOOM: list[bool] = []


def _lean_zoom_works() -> bool:
    """Whether :func:`_spline_zoom_nearest` equals scipy's zoom bit for bit with this scipy (checked once, on a
    small array with odd factors both ways, in one thread and in three; False sends every zoom through
    ``ndimage.zoom``)."""
    if not _LEAN_ZOOM:
        ok = False
        try:
            rng = np.random.default_rng(7)
            probe = rng.standard_normal((9, 14, 11)).astype(np.float32)
            zoom = [5 / 9, 31 / 14, 11 / 11]
            want = ndimage.zoom(probe, zoom, output=np.float64, order=3, mode="nearest", grid_mode=True)
            ok = True
            for threads in (1, 3):  # in one piece, and as the cores share out a large volume (uneven ranges)
                got, _, _ = _spline_zoom_nearest(Handover(probe), zoom, 3, threads)
                ok = ok and got.shape == want.shape and bool(np.array_equal(got, want))
        except Exception:  # noqa: BLE001 - any failure of the private kernel: the public route
            ok = False
        _LEAN_ZOOM.append(ok)
    return _LEAN_ZOOM[0]


def _resample_channel_separate_z(channel: np.ndarray, new_shape: tuple[int, ...], axis: int, order: int,
                                 order_z: int) -> np.ndarray:
    shape = channel.shape
    inplane = tuple(s for i, s in enumerate(new_shape) if i != axis)
    tmp_shape = list(new_shape)
    tmp_shape[axis] = shape[axis]
    tmp = np.zeros(tmp_shape, dtype=np.float64)
    for s in range(shape[axis]):
        idx = [slice(None)] * 3
        idx[axis] = s  # type: ignore[call-overload]
        tmp[tuple(idx)] = resize(channel[tuple(idx)], inplane, order)
    if shape[axis] == new_shape[axis]:
        return tmp
    # along the low-resolution axis: align_corners=False coordinates, order_z, edge mode
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in new_shape], indexing="ij", sparse=False)
    coords = np.array([
        (tmp.shape[d] / new_shape[d]) * (grids[d] + 0.5) - 0.5 for d in range(3)
    ])
    return ndimage.map_coordinates(tmp, coords, order=order_z, mode="nearest")


def resample_channel(channel: np.ndarray, new_shape: Sequence[int], order: int, order_z: int,
                     separate_axis: int | None) -> np.ndarray:
    """Resample one 3-D channel (float64 result) the way nnU-Net's ``resample_data_or_seg`` does for data."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(channel.shape) == new_shape:
        return channel
    if separate_axis is None:
        return resize(channel, new_shape, order)
    return _resample_channel_separate_z(channel, new_shape, separate_axis, order, order_z)


def resample_data(data: np.ndarray | Handover | SlabSource, new_shape: Sequence[int],
                  current_spacing: Sequence[float], new_spacing: Sequence[float], order: int = 3, order_z: int = 0,
                  force_separate_z: bool | None = None, threshold: float = 3.0) -> np.ndarray:
    """(C, *spatial) image -> (C, *new_shape) float32, nnU-Net's ``resample_data_or_seg_to_shape`` for data.

    ``data`` as a :class:`Handover` (its caller keeps no reference): a one-channel image resampled in one piece is
    dropped once copied into the zoom's float64 working array; as a :class:`SlabSource` (one channel, spatial
    shape) it is read into that array a few planes at a time and never whole (the peak memory of preprocessing a
    large series)."""
    new_shape = tuple(int(s) for s in new_shape)
    if isinstance(data, SlabSource):
        axis = separate_z_axis(force_separate_z, current_spacing, new_spacing, threshold)
        if data.shape != new_shape and axis is None:
            out = np.empty((1, *new_shape), dtype=np.float32)
            out[0] = _resize_taken(data, new_shape, order)
            return out
        data = data.materialize()[None]
    array = data.take() if isinstance(data, Handover) else data
    if tuple(array.shape[1:]) == new_shape:
        return array
    axis = separate_z_axis(force_separate_z, current_spacing, new_spacing, threshold)
    out = np.empty((array.shape[0], *new_shape), dtype=np.float32)
    if isinstance(data, Handover) and array.shape[0] == 1 and axis is None:
        channel = Handover(array[0])
        del array
        out[0] = _resize_taken(channel, new_shape, order)
        return out
    for c in range(array.shape[0]):
        out[c] = resample_channel(array[c], new_shape, order, order_z, axis)
    return out


def argmax_resampled(logits: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                     new_spacing: Sequence[float], order: int = 1, order_z: int = 0,
                     force_separate_z: bool | None = None, threshold: float = 3.0,
                     progress: Callable[[int, int], None] | None = None, threads: int | None = None) -> np.ndarray:
    """argmax over classes of the logits resampled to ``new_shape`` (first class on ties).

    Equal, voxel for voxel, to resampling all (C, ...) logits (nnU-Net's ``resampling_fn_probabilities``, whose
    output keeps the logits' dtype: each resampled value is rounded to ``logits.dtype``, fp16 for the fp16 logits
    of nnU-Net's aggregation) and then taking the argmax; :func:`_argmax_resampled_reference` is that
    computation, one class at a time.

    For linear resampling (``order`` 1; along a separate axis ``order_z`` 0) only a band around the label
    boundaries is resampled class by class; elsewhere the label is the coarse argmax, which is provably what
    the full computation gives there (see :func:`_argmax_resampled_band`). Memory does not grow with C beyond
    the input. ``progress(done, total)`` is called as work completes; ``threads`` defaults to the cores this
    process may use. Returns uint8 (uint16 above 256 classes) labels of shape ``new_shape``.
    """
    new_shape = tuple(int(s) for s in new_shape)
    dtype = np.uint8 if logits.shape[0] <= 256 else np.uint16
    if tuple(logits.shape[1:]) == new_shape:
        return argmax_chunked(logits, dtype)
    axis = separate_z_axis(force_separate_z, current_spacing, new_spacing, threshold)
    if _band_applies(logits, new_shape, order, order_z, axis):
        labels = _argmax_resampled_band(logits, new_shape, axis, dtype, progress, threads)
        if labels is not None:
            return labels
    else:
        last_route.update(route="reference", band_fraction=None, class_fraction=None)
    return _argmax_resampled_reference(logits, new_shape, current_spacing, new_spacing, order, order_z,
                                       force_separate_z, threshold, progress)


def _argmax_resampled_reference(logits: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                                new_spacing: Sequence[float], order: int = 1, order_z: int = 0,
                                force_separate_z: bool | None = None, threshold: float = 3.0,
                                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The brute-force route: every class resampled on the whole output grid, with a running argmax.

    What :func:`argmax_resampled` must equal; also its fallback where the band route does not apply (spline
    orders above 1, order 1 along a separate axis, non-finite logits, a band covering most of the volume)."""
    new_shape = tuple(int(s) for s in new_shape)
    dtype = np.uint8 if logits.shape[0] <= 256 else np.uint16
    if tuple(logits.shape[1:]) == new_shape:
        return argmax_chunked(logits, dtype)
    axis = separate_z_axis(force_separate_z, current_spacing, new_spacing, threshold)
    best = np.full(new_shape, -np.inf, dtype=np.float32)
    labels = np.zeros(new_shape, dtype=dtype)
    for c in range(logits.shape[0]):
        # nnU-Net stores the resampled logits in their own dtype (fp16 from its fp16 aggregation) before the
        # argmax: round the same way, or near-ties break differently
        channel = logits[c] if logits.dtype != np.float16 else logits[c].astype(np.float32)  # exact
        resampled = resample_channel(channel, new_shape, order, order_z, axis).astype(logits.dtype)
        resampled = resampled.astype(np.float32, copy=False)
        better = resampled > best
        labels[better] = c
        np.maximum(best, resampled, out=best)
        if progress:
            progress(c + 1, logits.shape[0])
    return labels


# ------------------------------------------------------------------------------------------------------------
# The band route.
#
# What the reference computes for one output voxel x and class c (scipy 1.x, ``ni_interpolation.c``): along each
# linear axis d, ``cc_d = ((x_d + 0.5) * (n_in / n_out)) - 0.5`` (grid mode), ``s_d = floor(cc_d)``, weights
# ``w = (1 - f, 1 - (1 - f))`` with ``f = cc_d - s_d`` (both in [0, 1]); the samples s_d and s_d + 1 are clamped
# into the array ('nearest'). The value is ``t = sum over the 2^3 footprint (last axis fastest) of
# ((v * w_0) * w_1) * w_2`` in float64, then rounded to the logits' dtype. On the separate-z route the in-plane
# value is the same 2-D sum in the coarse slice ``round_half_up(cc_z)`` (map_coordinates, order 0).
#
# Exactness of the shortcut: the weights do not depend on the class, are >= 0, and every step (x * w with
# w >= 0, x + y, the final rounding) is monotone non-decreasing in each input. So if a class k satisfies
# v_k >= v_c at every footprint sample, the computed and rounded values satisfy R_k >= R_c: for c > k the
# argmax (first maximum) cannot pick c. For c < k a tie would pick c, so we need R_k > R_c strictly: if
# v_k - v_c > tau at every sample, the exact sum of the computed weights (1 - 4 ulp) times that margin exceeds
# the float64 rounding of both sums (< 1e-14 M) plus the two final roundings (< eps_T * M + tiny_T each half),
# M being the largest |logit| (a convex combination stays within it). So: where all footprint samples have the
# same coarse argmax k and a margin > tau over every lower class ("safe"), the label is k. Everywhere else (the
# band) the values are computed exactly as the reference does, by scipy's own ``map_coordinates`` on the very
# same float64 coordinates (its interpolation arithmetic is the zoom's, term for term), only there. And in the
# band only for the classes that can win: where some class k has every footprint sample more than tau above every
# sample of c, the same argument makes R_k > R_c, so c is skipped (``_candidates``; on the demo bundle's 22
# classes this cut resampling a 320x260x300 series back from 3.95 to 2.69 s).

_UNSAFE_SLAB = 4   # coarse planes per task in the coarse pass
_OUT_SLAB = 4      # output planes per task in the band pass
_DENSE_BAND = 0.5  # above this band fraction the brute-force route is cheaper


def _band_applies(logits: np.ndarray, new_shape: tuple[int, ...], order: int, order_z: int,
                  axis: int | None) -> bool:
    if order != 1 or (axis is not None and order_z != 0) or logits.ndim != 4 or logits.shape[0] < 2:
        return False
    if not np.issubdtype(logits.dtype, np.floating) or logits.dtype.itemsize > 8:
        return False
    # the reference's zoom derives its output shape from the factors new/old: where that rounds elsewhere the
    # reference fails as it always did
    for d in range(3):
        if d == axis:
            continue
        o = logits.shape[1 + d]
        if round(o * (new_shape[d] / o)) != new_shape[d]:
            return False
    return True


class _Axis:
    """One axis of the resampling: the float64 source coordinate of every output index (passed to
    ``map_coordinates``), whether the footprint is two samples (linear) or one (nearest / integral
    coordinates), and the index of each output's footprint block in the coarse block-code array."""

    def __init__(self, n_in: int, n_out: int, nearest: bool) -> None:
        k = np.arange(n_out, dtype=np.float64)
        if nearest:  # the separate-z route: map_coordinates(order 0) with align_corners=False coordinates
            cc = (n_in / n_out) * (k + 0.5) - 0.5
            idx = np.clip(np.floor(cc + 0.5), 0, n_in - 1)
            self.coord = idx  # an integral coordinate: linear weights (1, 0), the 2-D value exactly
            self.pair = False
            self.block = idx.astype(np.intp)
            return
        zoom = np.divide(np.float64(n_in), np.float64(n_out))  # as ndimage.zoom (grid_mode) computes it
        cc = k + 0.5
        cc *= zoom
        cc -= 0.5
        self.coord = cc
        if np.all(cc == np.floor(cc)):  # integral coordinates: the second sample has weight 0
            self.pair = False
            self.block = np.clip(cc, 0, n_in - 1).astype(np.intp)
        else:
            # samples floor(cc) and floor(cc) + 1, clamped; block b of the edge-padded pairs covers b - 1, b
            self.pair = True
            self.block = np.clip(np.floor(cc) + 1, 0, n_in).astype(np.intp)


def _coarse_pass(logits: np.ndarray, pool: ThreadPoolExecutor,
                 work: type) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Per coarse voxel the first-max argmax k and its margin ``v_k - max(v_c for c < k)`` (inf for k = 0;
    ``work`` dtype), and the largest |logit|; None if any logit is not finite."""
    C, n0 = logits.shape[0], logits.shape[1]
    lab_dtype = np.uint8 if C <= 255 else np.uint16
    labels = np.empty(logits.shape[1:], dtype=lab_dtype)
    margin: np.ndarray = np.empty(logits.shape[1:], dtype=work)

    def slab(z0: int) -> float:
        z1 = min(z0 + _UNSAFE_SLAB, n0)
        best: np.ndarray = logits[0, z0:z1].astype(work)
        lower = np.full_like(best, -np.inf)
        low = best.copy()
        lab = labels[z0:z1]
        lab[...] = 0
        for c in range(1, C):
            v = logits[c, z0:z1]
            if v.dtype != work:
                v = v.astype(work)
            better = v > best
            np.copyto(lower, best, where=better)
            np.copyto(best, v, where=better)
            np.copyto(lab, c, where=better)
            np.minimum(low, v, out=low)
        np.subtract(best, lower, out=margin[z0:z1])
        return float(max(np.max(best), -np.min(low)))

    tops = list(pool.map(slab, range(0, n0, _UNSAFE_SLAB)))
    top = max(tops)
    if not np.isfinite(top):  # NaN/inf: only the reference knows what it does with them
        return None
    return labels, margin, top


def _block_reduce(values: np.ndarray, axes: list[_Axis], reduce: Any) -> np.ndarray:
    """``reduce`` of ``values`` (coarse (Z, Y, X)) over each footprint block, pair by pair: along a linear axis the
    edge-padded pairs (block b covers samples b - 1 and b, clamped), so that ``axes[d].block`` indexes the result.
    ``reduce(a, b)``: ``np.maximum``/``np.minimum`` (the classes' block extrema) or "the common code, else the
    band" (the block codes)."""
    out = values
    for d in range(3):
        if axes[d].pair:
            pad = [(0, 0)] * 3
            pad[d] = (1, 1)
            padded = np.pad(out, pad, mode="edge")
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[d], hi[d] = slice(0, -1), slice(1, None)
            out = reduce(padded[tuple(lo)], padded[tuple(hi)])
    return out


def _candidates(logits: np.ndarray, axes: list[_Axis], band_blocks: np.ndarray, tau: float,
                pool: ThreadPoolExecutor) -> np.ndarray:
    """(C, len(band_blocks)) bool: whether class c can be the argmax of an output voxel whose footprint is that
    block (``band_blocks``: flat indices into the block grid of the blocks in the band). It cannot where another
    class k has ``min(v_k) - max(v_c) > tau`` over the block's samples: then at every sample v_k - v_c > tau, so
    k's computed value is strictly above c's (the exactness argument above). Kept where ``max(v_c) >= L - tau``,
    L the largest of the classes' block minima, compared in float32 against a threshold rounded down (keeping a
    class is always exact; only skipping one needs the bound). One class at a time per thread: its block
    extrema over the whole grid are transient, only their values in the band are kept."""
    C = logits.shape[0]

    def extreme(c: int, reduce: Any) -> np.ndarray:
        return _block_reduce(logits[c], axes, reduce).reshape(-1)[band_blocks]

    floor = np.full(band_blocks.size, -np.inf)
    for low in pool.map(lambda c: extreme(c, np.minimum), range(C)):
        np.maximum(floor, low, out=floor)
    floor -= tau
    threshold = floor.astype(np.float32)
    up = threshold.astype(np.float64) > floor  # rounded up: one float32 step down keeps it <= L - tau
    threshold[up] = np.nextafter(threshold[up], np.float32(-np.inf))
    out = np.empty((C, band_blocks.size), dtype=bool)

    def keep(c: int) -> None:
        np.greater_equal(extreme(c, np.maximum), threshold, out=out[c])

    list(pool.map(keep, range(C)))
    return out


def _argmax_resampled_band(logits: np.ndarray, new_shape: tuple[int, ...], axis: int | None, dtype: type,
                           progress: Callable[[int, int], None] | None,
                           threads: int | None) -> np.ndarray | None:
    """The band route (see the comment above); None where the reference is the better route."""
    C = logits.shape[0]
    in_shape = logits.shape[1:]
    rounded = np.dtype(logits.dtype)  # the dtype nnU-Net's resampled array keeps
    work = np.float64 if rounded.itemsize > 4 else np.float32
    if threads is None:
        threads = usable_cores()
    axes = [_Axis(in_shape[d], new_shape[d], nearest=(d == axis)) for d in range(3)]

    with ThreadPoolExecutor(max(1, threads)) as pool:
        coarse = _coarse_pass(logits, pool, work)
        if coarse is None:
            last_route.update(route="reference", band_fraction=None, class_fraction=None)
            return None
        labels_in, margin, top = coarse
        if top > float(np.finfo(np.float32).max) / 4:  # the float32 comparison could overflow: reference
            last_route.update(route="reference", band_fraction=None, class_fraction=None)
            return None
        # the reference rounds each value to the logits' dtype, then to float32 for the comparison
        eps_t = max(float(np.finfo(rounded).eps), float(np.finfo(np.float32).eps))
        tiny_t = max(float(np.finfo(rounded).smallest_subnormal), float(np.finfo(np.float32).smallest_subnormal))
        eps_w = float(np.finfo(work).eps)
        tau = 2 * eps_t * top + 2 * tiny_t + 1e-12 * top + 4 * eps_w * top
        # block codes: the common label of a block whose samples all agree and are safe, else C (the band)
        code = np.where(margin > tau, labels_in, C).astype(np.uint8 if C <= 255 else np.uint16)
        del margin, labels_in

        def agreed(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # the pair's common code, else the band
            return np.where(a == b, a, C).astype(a.dtype)

        code = _block_reduce(code, axes, agreed)

        # per block of the band, the classes that can win there (most cannot: the rest are skipped below)
        band_blocks = np.flatnonzero(code.reshape(-1) == C)
        candidates = _candidates(logits, axes, band_blocks, tau, pool)
        slot = np.full(code.size, -1, dtype=np.intp)
        slot[band_blocks] = np.arange(band_blocks.size)
        n_out0 = new_shape[0]
        starts = list(range(0, n_out0, _OUT_SLAB))
        band_sizes: list[int] = []
        # estimate the band on a sample of slabs first: a band over most of the volume is cheaper brute force
        sample = starts[:: max(1, len(starts) // 16)]

        def codes_for(o0: int) -> np.ndarray:
            o1 = min(o0 + _OUT_SLAB, n_out0)
            out = code.take(axes[0].block[o0:o1], axis=0)
            out = out.take(axes[1].block, axis=1)
            return out.take(axes[2].block, axis=2)

        sampled = sum(int(np.count_nonzero(codes_for(o0) == C)) for o0 in sample)
        sampled_size = sum(min(o0 + _OUT_SLAB, n_out0) - o0 for o0 in sample) * new_shape[1] * new_shape[2]
        if sampled > _DENSE_BAND * sampled_size:
            last_route.update(route="reference", band_fraction=sampled / sampled_size, class_fraction=None)
            return None

        out: np.ndarray = np.empty(new_shape, dtype=dtype)
        done = [0]

        def slab(o0: int) -> tuple[int, int]:
            o1 = min(o0 + _OUT_SLAB, n_out0)
            codes = codes_for(o0)
            band = np.nonzero(codes == C)
            n_band = band[0].size
            evaluated = 0
            if n_band:
                # the coarse planes this slab reads (map_coordinates on a crop shifted by an integer: the same
                # float64 coordinates minus an integer are exact, edge clamping only happens at true edges)
                c0 = axes[0].coord[o0:o1]
                first = int(max(0, np.floor(c0.min())))
                last = int(min(in_shape[0] - 1, np.floor(c0.max()) + 1))
                coords = np.empty((3, n_band), dtype=np.float64)
                coords[0] = axes[0].coord[o0 + band[0]] - first
                coords[1] = axes[1].coord[band[1]]
                coords[2] = axes[2].coord[band[2]]
                blocks = slot[np.ravel_multi_index((axes[0].block[o0 + band[0]], axes[1].block[band[1]],
                                                    axes[2].block[band[2]]), code.shape)]
                best = np.full(n_band, -np.inf, dtype=np.float32)
                lab: np.ndarray = np.zeros(n_band, dtype=dtype)
                values = np.empty(n_band, dtype=np.float64)
                for c in range(C):
                    # only where class c can win: elsewhere another class is above it at every sample
                    where = np.flatnonzero(candidates[c, blocks])
                    if where.size == 0:
                        continue
                    evaluated += where.size
                    src = logits[c, first:last + 1]
                    if src.dtype not in (np.float32, np.float64):
                        src = src.astype(np.float32)  # exact: scipy reads float16 nowhere
                    got = values[:where.size]
                    ndimage.map_coordinates(src, coords[:, where], output=got, order=1, mode="nearest")
                    v = got.astype(rounded).astype(np.float32, copy=False)
                    better = v > best[where]
                    lab[where[better]] = c
                    best[where] = np.maximum(best[where], v)
                codes[band] = lab
            out[o0:o1] = codes
            return n_band, evaluated

        evaluations = 0
        for n_band, evaluated in pool.map(slab, starts):
            band_sizes.append(n_band)
            evaluations += evaluated
            done[0] += 1
            if progress:
                progress(done[0], len(starts))
    last_route.update(route="band", band_fraction=sum(band_sizes) / float(np.prod(new_shape)),
                      class_fraction=evaluations / max(1, C * sum(band_sizes)))
    return out


#: how the last :func:`argmax_resampled` call with resampling went: ``route`` "band" or "reference", the share of
#: output voxels resampled class by class (the band; estimated where it made the call fall back) and, on the band
#: route, the share of (class, band voxel) pairs interpolated (the classes that could win there)
last_route: dict[str, object] = {"route": None, "band_fraction": None, "class_fraction": None}


def argmax_chunked(logits: np.ndarray, dtype: type = np.uint8, slab: int = 16) -> np.ndarray:
    """argmax over axis 0 in slabs along the first spatial axis (bounded temporary memory)."""
    out: np.ndarray = np.empty(logits.shape[1:], dtype=dtype)
    for z in range(0, logits.shape[1], slab):
        out[z:z + slab] = np.argmax(logits[:, z:z + slab], axis=0)
    return out


def zoom_to_shape(array: np.ndarray, new_shape: Sequence[int], order: int, mode: str = "constant") -> np.ndarray:
    """``scipy.ndimage.zoom`` with per-axis factors new/old (TotalSegmentator's ``change_spacing`` with a
    target shape; no grid mode). Used to bring a pre-resampled mask back to the input grid.

    Order 0 on integer labels takes :func:`take_grid` over :func:`order0_zoom_indices` (bit-identical, a gather
    instead of a spline evaluation per voxel); other orders and dtypes keep ``ndimage.zoom``."""
    if order == 0 and order0_gather_applies(array, new_shape):
        return take_grid(array, order0_zoom_indices(array.shape, new_shape, mode))
    return _zoom_to_shape_reference(array, new_shape, order, mode)


def _zoom_to_shape_reference(array: np.ndarray, new_shape: Sequence[int], order: int, mode: str) -> np.ndarray:
    """``ndimage.zoom`` and the exact-shape fix-up: the route of every order but 0, and the reference the order-0
    gather is tested and benchmarked against."""
    zoom = [n / o for n, o in zip(new_shape, array.shape)]
    out = ndimage.zoom(array, zoom, order=order, mode=mode)
    if tuple(out.shape) != tuple(new_shape):  # scipy rounds the output shape; force the exact grid
        fixed = np.zeros(new_shape, dtype=out.dtype)
        sl = tuple(slice(0, min(a, b)) for a, b in zip(out.shape, new_shape))
        fixed[sl] = out[sl]
        out = fixed
    return out


def order0_gather_applies(array: np.ndarray, new_shape: Sequence[int]) -> bool:
    """Whether :func:`take_grid` reproduces ``zoom_to_shape(array, new_shape, order=0)`` exactly: integer values
    that float64 holds exactly (scipy interpolates in float64), no empty axis."""
    return (array.dtype.kind in "iu" and array.dtype.itemsize <= 4 and len(new_shape) == array.ndim
            and min(array.shape, default=0) > 0 and min(new_shape, default=0) > 0)


def order0_zoom_indices(shape: Sequence[int], new_shape: Sequence[int], mode: str) -> list[np.ndarray]:
    """What ``zoom_to_shape(..., order=0, mode=mode)`` reads on each axis: for each output index the input
    index, or -1 where scipy writes ``cval`` (0) or the shape fix-up writes 0.

    Order-0 zoom is separable (scipy maps output index o of each axis to o * (old-1)/(new-1) on that axis alone and
    takes the nearest sample; a coordinate outside the input is cval), so each axis' mapping is taken from scipy
    itself: the zoom of the ramp 1..old along that axis with the same factor and mode (0 is cval), followed by the
    same exact-shape fix-up as :func:`zoom_to_shape`."""
    out: list[np.ndarray] = []
    for old, new in zip(shape, new_shape):
        ramp = np.arange(1, old + 1, dtype=np.float64)
        zoomed = ndimage.zoom(ramp, new / old, order=0, mode=mode, cval=0.0)
        idx = np.full(new, -1, dtype=np.intp)
        n = min(len(zoomed), new)
        taken = zoomed[:n].astype(np.intp)
        if not (np.array_equal(taken, zoomed[:n]) and taken.min(initial=0) >= 0 and taken.max(initial=0) <= old):
            raise AssertionError(f"scipy's order-0 zoom of a ramp is not a selection ({old} -> {new}, {mode})")
        idx[:n] = taken - 1
        out.append(idx)
    return out


def take_grid(array: np.ndarray, indices: Sequence[np.ndarray]) -> np.ndarray:
    """``array[ix_(*indices)]`` (C-contiguous) with index -1 meaning 0: one ``np.take`` per axis, the innermost
    axis first (on the smallest array; the outer axes are then whole-row copies), each -1 plane zeroed."""
    out = array
    for axis in reversed(range(array.ndim)):
        idx = indices[axis]
        fill = idx < 0
        if not fill.any():
            out = np.take(out, idx, axis=axis)
            continue
        out = np.take(out, np.where(fill, 0, idx), axis=axis)
        out[(slice(None),) * axis + (fill,)] = 0
    return np.ascontiguousarray(out)
