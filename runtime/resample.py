"""Resampling with nnU-Net's semantics, on numpy/scipy only (no torch, no scikit-image).

nnU-Net resamples images with a cubic spline (order 3) and probabilities/logits with order 1, using
scikit-image's ``resize(..., mode="edge", anti_aliasing=False)`` (a ``scipy.ndimage.zoom`` with
``grid_mode=True`` and output clipped to the input's range). When the spacing is anisotropic (max/min > 3) the
low-resolution axis is handled separately: 2-D resizes in-plane, then order ``order_z`` (0) along that axis.
Arrays here are (C, *spatial) in the network's axis order.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import ndimage


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
    input: a grid-mode spline zoom with edge extension, clipped to the input's value range. Returns float64."""
    image = np.asarray(image, dtype=np.float64)
    zoom = [n / o for n, o in zip(new_shape, image.shape)]
    out = ndimage.zoom(image, zoom, order=order, mode="nearest", grid_mode=True)
    if order > 1:  # lower orders cannot leave the input's range
        np.clip(out, image.min(), image.max(), out=out)
    return out


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


def resample_data(data: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                  new_spacing: Sequence[float], order: int = 3, order_z: int = 0,
                  force_separate_z: bool | None = None, threshold: float = 3.0) -> np.ndarray:
    """(C, *spatial) image -> (C, *new_shape) float32, nnU-Net's ``resample_data_or_seg_to_shape`` for data."""
    if tuple(data.shape[1:]) == tuple(new_shape):
        return data
    axis = separate_z_axis(force_separate_z, current_spacing, new_spacing, threshold)
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        out[c] = resample_channel(data[c], new_shape, order, order_z, axis)
    return out


def argmax_resampled(logits: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                     new_spacing: Sequence[float], order: int = 1, order_z: int = 0,
                     force_separate_z: bool | None = None, threshold: float = 3.0,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """argmax over classes of the logits resampled to ``new_shape``, one class at a time.

    Equivalent to resampling all (C, ...) logits (nnU-Net's ``resampling_fn_probabilities``, whose output keeps
    the logits' dtype) and then taking the argmax (first class on ties), but holds only one resampled class plus
    the running maximum: memory does not grow with C.
    Returns uint8 (uint16 above 255 classes) labels of shape ``new_shape``.
    """
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
        resampled = resample_channel(logits[c], new_shape, order, order_z, axis).astype(logits.dtype)
        resampled = resampled.astype(np.float32, copy=False)
        better = resampled > best
        labels[better] = c
        np.maximum(best, resampled, out=best)
        if progress:
            progress(c + 1, logits.shape[0])
    return labels


def argmax_chunked(logits: np.ndarray, dtype: type = np.uint8, slab: int = 16) -> np.ndarray:
    """argmax over axis 0 in slabs along the first spatial axis (bounded temporary memory)."""
    out: np.ndarray = np.empty(logits.shape[1:], dtype=dtype)
    for z in range(0, logits.shape[1], slab):
        out[z:z + slab] = np.argmax(logits[:, z:z + slab], axis=0)
    return out


def zoom_to_shape(array: np.ndarray, new_shape: Sequence[int], order: int, mode: str = "constant") -> np.ndarray:
    """``scipy.ndimage.zoom`` with per-axis factors new/old (TotalSegmentator's ``change_spacing`` with a
    target shape; no grid mode). Used to bring a pre-resampled mask back to the input grid."""
    zoom = [n / o for n, o in zip(new_shape, array.shape)]
    out = ndimage.zoom(array, zoom, order=order, mode=mode)
    if tuple(out.shape) != tuple(new_shape):  # scipy rounds the output shape; force the exact grid
        fixed = np.zeros(new_shape, dtype=out.dtype)
        sl = tuple(slice(0, min(a, b)) for a, b in zip(out.shape, new_shape))
        fixed[sl] = out[sl]
        out = fixed
    return out
