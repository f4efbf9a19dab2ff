"""Postprocess stage: network logits -> labels on exactly the input's voxel grid.

Reverses :mod:`edgeseg.runtime.preprocess` in the opposite order: resample the logits back to the cropped
shape and argmax (class by class, bounded memory), put the crop back into the full array, undo
``transpose_forward`` and the SimpleITK order, map each part's labels to the bundle's merged labels (later parts
overwrite earlier ones where they found a structure, as TotalSegmentator merges its parts), bring a pre-resampled
mask back to the input shape with the bundle's order (0), and undo the reorientation.
"""
from __future__ import annotations

import numpy as np

from edgeseg.bundle.schema import Part
from edgeseg.runtime.infer.sliding_window import Aggregated
from edgeseg.runtime.preprocess import Oriented, Preprocessed
from edgeseg.runtime.resample import (argmax_resampled, order0_gather_applies, order0_zoom_indices, take_grid,
                                      zoom_to_shape)


def logits_to_part_labels(prediction: Aggregated, pre: Preprocessed, part: Part) -> np.ndarray:
    """Sliding-window result -> the part's own labels (uint8) in (i, j, k) order of the oriented image.

    Without resampling the argmax is read slab by slab from the fp16 accumulator; with resampling the logits
    are resampled class by class with a running argmax (memory independent of the number of classes)."""
    if tuple(pre.data.shape[1:]) == tuple(pre.shape_after_cropping):
        cropped = prediction.argmax()
    else:
        r = part.resampling_probabilities
        # nnU-Net resamples its fp16 logits into an fp16 array (``resample_data_or_seg``: ``dtype_out =
        # data.dtype``), so each resampled value is rounded to fp16 before the argmax: the fp16 quotient, made in
        # place in the accumulator (no float32 copy of every class), gives exactly that rounding
        cropped = argmax_resampled(prediction.logits16(), pre.shape_after_cropping, pre.network_spacing,
                                   pre.spacing_before_resampling, r.order, r.order_z, r.force_separate_z,
                                   r.anisotropy_threshold)
    full = np.zeros(pre.shape_before_cropping, dtype=cropped.dtype)
    full[tuple(slice(a, b) for a, b in pre.bbox)] = cropped
    full = full.transpose(part.transpose_backward)
    return np.ascontiguousarray(full.transpose(2, 1, 0))


def merge_part(merged: np.ndarray, part_labels: np.ndarray, part: Part) -> None:
    """Write the part's structures into ``merged`` with the bundle's numbering (in place)."""
    lut = np.zeros(max(part.num_outputs, int(part_labels.max()) + 1), dtype=merged.dtype)
    for src, dst in part.label_map.items():
        lut[src] = dst
    mapped = lut[part_labels]
    found = mapped != 0
    merged[found] = mapped[found]


def to_input_grid(labels: np.ndarray, oriented: Oriented) -> np.ndarray:
    """Undo pre-resampling (the bundle's ``order_back`` and ``mode``, to the exact input shape) and reorientation.

    With order 0 (TotalSegmentator's bundles) both are one gather straight into the C-contiguous result: the
    per-axis indices of :func:`~edgeseg.runtime.resample.order0_zoom_indices`, flipped and permuted as nibabel's
    ``apply_orientation`` would flip and transpose the zoomed array, applied to the (small) label map transposed
    the same way; the same values as zoom, ``apply_orientation`` and a contiguous copy."""
    import nibabel as nib

    pre = oriented.pre_resample
    back = None
    if oriented.ornt is not None:
        canonical = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
        back = nib.orientations.ornt_transform(canonical, oriented.ornt)
    if pre is not None and tuple(labels.shape) != oriented.input_shape:
        if pre.order_back == 0 and order0_gather_applies(labels, oriented.input_shape):
            indices = order0_zoom_indices(labels.shape, oriented.input_shape, pre.mode)
            if back is not None:
                labels, indices = _oriented_gather(labels, indices, back)
            return take_grid(labels, indices)
        labels = zoom_to_shape(labels, oriented.input_shape, order=pre.order_back, mode=pre.mode)
    if back is not None:
        labels = nib.orientations.apply_orientation(labels, back)
    return np.ascontiguousarray(labels)


def _oriented_gather(labels: np.ndarray, indices: list[np.ndarray],
                     ornt: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``apply_orientation(labels[ix_(*indices)], ornt)`` as a gather ``source[ix_(*oriented)]``: nibabel flips
    axis a where ``ornt[a, 1] == -1`` (reversing that axis' indices) and then transposes by
    ``argsort(ornt[:, 0])`` (the source and the index lists permuted the same way)."""
    flips = [idx[::-1] if flip == -1 else idx for idx, flip in zip(indices, ornt[:, 1])]
    perm = [int(a) for a in np.argsort(ornt[:, 0])]
    return labels.transpose(perm), [flips[a] for a in perm]


def empty_labels(shape: tuple[int, ...], max_label: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8 if max_label < 256 else np.uint16)
