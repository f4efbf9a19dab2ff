"""Preprocess stage: a :class:`Volume` -> the network's input, with nnU-Net's predictor semantics.

Order of operations (each undone in reverse by :mod:`edgeseg.runtime.postprocess`):

1. ``reorient`` (bundle variant): "RAS" reorients to the closest canonical orientation (TotalSegmentator does
   this before nnU-Net); pure axis flips/permutations, exactly invertible.
2. ``pre_resample`` (TotalSegmentator's wrapper, optional): ``scipy.ndimage.zoom`` to the task spacing with the
   bundle's spline order and boundary mode, then truncation to int32, as TotalSegmentator's ``change_spacing``
   does (every setting comes from :class:`~edgeseg.bundle.schema.PreResample`).
3. To nnU-Net's order: the SimpleITK array order (k, j, i) with spacing reversed, then ``transpose_forward``.
4. Crop to the non-zero region (holes filled), normalize per channel, resample to the plans' spacing.

Shapes: the network input is (C, Z, Y, X) float32 in the network's axis order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from edgeseg.bundle.schema import Normalization, Part, PreResample, Variant
from edgeseg.runtime.arrays import reversed_axes, usable_cores
from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.read.volume import Volume
from edgeseg.runtime.resample import Handover, SlabSource, compute_new_shape, resample_data, separate_z_axis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Oriented:
    """The series after the variant's reorientation and pre-resampling, in (i, j, k) order.

    ``ornt`` is nibabel's orientation transform applied (None: as stored); ``input_shape`` the shape before
    pre-resampling (what the mask must come back to); ``pre_resample`` the wrapper settings applied (None: none).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    ornt: np.ndarray | None
    input_shape: tuple[int, int, int]
    pre_resample: PreResample | None


@dataclass(frozen=True)
class Preprocessed:
    """One part's network input and what is needed to bring its prediction back.

    ``data``: (C, Z, Y, X) float32, network axis order, cropped, normalized, at ``network_spacing``.
    ``bbox``: half-open crop box in the transposed (pre-crop) array; ``shape_before_cropping`` its shape.
    """

    data: np.ndarray
    spacing_before_resampling: tuple[float, ...]
    network_spacing: tuple[float, ...]
    shape_before_cropping: tuple[int, ...]
    shape_after_cropping: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]


def orient(volume: Volume, variant: Variant) -> Oriented:
    """Steps 1-2: reorientation and TotalSegmentator-style pre-resampling (float32 result; without
    pre-resampling a view of ``volume.array``, never written to)."""
    import nibabel as nib

    array = np.asarray(volume.array, dtype=np.float32)
    if array.ndim != 3:
        raise InvalidSeriesError(
            f"Series {volume.series_uid or volume.source} is {array.ndim}-D; edgeseg segments 3-D volumes.")
    affine = np.asarray(volume.affine, dtype=np.float64)
    ornt = None
    if variant.reorient == "RAS":
        ornt = nib.orientations.io_orientation(affine)
        array = nib.orientations.apply_orientation(array, ornt)
        affine = affine @ nib.orientations.inv_ornt_aff(ornt, volume.shape)
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    input_shape = tuple(int(s) for s in array.shape)
    pre = variant.pre_resample
    if pre is not None:
        array, spacing = _pre_resample(array, spacing, pre)
    # without pre-resampling a (flipped, transposed) view of the volume's array: every part copies it into its own
    # network order anyway, and a whole float32 copy more is what a 512x512x400 series cannot spare
    return Oriented(array, spacing, ornt, input_shape, pre)  # type: ignore[arg-type]


def _pre_resample(array: np.ndarray, spacing: Sequence[float], pre: PreResample) -> tuple[np.ndarray, tuple]:
    """TotalSegmentator's ``change_spacing(img, pre.spacing, order=pre.order, dtype=int32)`` on the RAS array.

    As there, the zoom factors are the header voxel size over the target spacing (float32 when the bundle says
    so: a NIfTI header holds float32), an input already at exactly the target spacing is passed on unchanged
    (no cast either), and the resampled spacing is what the written file's header then says."""
    voxel = np.asarray(spacing, dtype=np.float64)
    header = voxel.astype(np.float32).astype(np.float64) if pre.header_float32 else voxel
    target = np.asarray(pre.spacing, dtype=np.float64)
    if np.array_equal(header, target):
        return array, tuple(float(s) for s in voxel)
    zoom = header / target
    # TotalSegmentator zooms nibabel's float64 data; scipy converts every sample it reads to double anyway, so
    # zooming the float32 (oriented view) straight into a float64 output gives the same bits for order <= 1 (no
    # spline prefilter) without a float64 copy of the whole input (840 MB and ~0.6 s for 512x512x400). Orders > 1
    # prefilter the input in its own dtype: they keep the copy.
    source = array if pre.order <= 1 else array.astype(np.float64)
    out = ndimage.zoom(source, zoom, order=pre.order, mode=pre.mode, output=np.float64)
    if pre.cast == "int32":
        out = out.astype(np.int32)
    new_spacing = voxel / zoom
    if pre.header_float32:
        new_spacing = new_spacing.astype(np.float32).astype(np.float64)
    return out.astype(np.float32), tuple(float(s) for s in new_spacing)


def to_network_order(oriented: Oriented, part: Part) -> tuple[np.ndarray, tuple[float, ...]]:
    """Step 3: (i, j, k) -> SimpleITK (k, j, i) -> ``transpose_forward``; returns (1, Z, Y, X) and spacing.

    The result is a float32 copy laid out as nnU-Net's is (C-contiguous in SimpleITK order, then a transposed
    view): numpy's sums, hence the normalization's mean and std, depend on the memory layout."""
    # numpy's copy of the transposed array walks the input with a large stride (0.6 s for 512x512x200):
    # reversed_axes copies the same values, in blocks, on the process's cores
    data = reversed_axes(np.asarray(oriented.array, dtype=np.float32), threads=usable_cores())[None]
    spacing = tuple(oriented.spacing[::-1])
    tf = part.transpose_forward
    data = data.transpose(0, *[i + 1 for i in tf])
    return data, tuple(spacing[i] for i in tf)


def nonzero_bbox(data: np.ndarray, fill_holes: bool = False) -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
    """nnU-Net's crop_to_nonzero box: non-zero in any channel; half-open; whole image if empty.

    nnU-Net fills holes in the mask first; that never changes the bounding box, so it is only done when the mask
    itself is needed (``use_mask_for_norm``): on large volumes hole filling costs seconds."""
    mask = np.any(data != 0, axis=0)
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    bbox = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=other))
        bbox.append((int(present[0]), int(present[-1]) + 1) if present.size else (0, mask.shape[axis]))
    return tuple(bbox), mask


def normalize(data: np.ndarray, schemes: Sequence[Normalization], mask: np.ndarray) -> np.ndarray:
    """nnU-Net's default normalization schemes, per channel, in float32 (in place on a float32 copy)."""
    for c, norm in enumerate(schemes):
        image = data[c]
        eps = 1e-8
        if norm.scheme == "ZScoreNormalization":
            if norm.use_mask_for_norm:
                mean = image[mask].mean()
                std = image[mask].std()
                image[mask] = (image[mask] - mean) / max(std, eps)
            else:
                mean = image.mean()
                std = image.std()
                image -= mean
                image /= max(std, eps)
        elif norm.scheme == "CTNormalization":
            p = norm.intensity_properties
            np.clip(image, p["percentile_00_5"], p["percentile_99_5"], out=image)
            image -= p["mean"]
            image /= max(p["std"], eps)
        elif norm.scheme == "RescaleTo01Normalization":
            image -= image.min()
            image /= np.clip(image.max(), a_min=eps, a_max=None)
        elif norm.scheme == "NoNormalization":
            pass
        else:  # the bundle loader only admits the schemes above
            raise ValueError(f"unknown normalization scheme {norm.scheme}")
    return data


def elementwise_normalization(data: np.ndarray,
                              schemes: Sequence[Normalization]) -> Callable[[np.ndarray], None] | None:
    """For a one-channel image whose scheme is elementwise once its parameters are known (z-score over the whole
    image, CT, none): a function that normalizes a float32 array in place exactly as :func:`normalize` does each
    of its voxels, with the parameters computed here, from ``data`` (nnU-Net's layout: the mean and std of a copy
    and of a view differ in the last bit). None for other schemes (z-score within the mask, rescaling to [0, 1])
    and several channels."""
    if data.shape[0] != 1 or len(schemes) != 1:
        return None
    norm = schemes[0]
    eps = 1e-8
    if norm.scheme == "ZScoreNormalization" and not norm.use_mask_for_norm:
        image = data[0]
        mean = image.mean()
        divisor = max(image.std(), eps)

        def zscore(x: np.ndarray) -> None:
            x -= mean
            x /= divisor
        return zscore
    if norm.scheme == "CTNormalization":
        p = norm.intensity_properties

        def ct(x: np.ndarray) -> None:
            np.clip(x, p["percentile_00_5"], p["percentile_99_5"], out=x)
            x -= p["mean"]
            x /= max(p["std"], eps)
        return ct
    if norm.scheme == "NoNormalization":
        return lambda x: None
    return None


def preprocess(oriented: Oriented, part: Part) -> Preprocessed:
    """Steps 3-4 for one model part.

    Memory: where the input is resampled in one piece with an elementwise normalization (the common case), the
    network-order copy only serves the crop box and the normalization's mean and std and is dropped before the
    resampling, which reads the normalized values a few planes at a time from the oriented image (a view of the
    input) into its float64 working array: a 512x512x400 series never holds its float32 copy and that array at
    once. The values are those of normalizing the copy and resampling it, bit for bit."""
    data, spacing = to_network_order(oriented, part)
    if part.num_input_channels != data.shape[0]:
        raise InvalidSeriesError(
            f"The model part '{part.name}' needs {part.num_input_channels} input channels; a series gives 1.")
    shape_before = tuple(int(s) for s in data.shape[1:])
    bbox, mask = nonzero_bbox(data, fill_holes=any(n.use_mask_for_norm for n in part.normalization))
    slicer = tuple(slice(a, b) for a, b in bbox)
    data = data[(slice(None), *slicer)]  # a view of to_network_order's copy, as nnU-Net's crop_to_nonzero
    mask = mask[slicer]
    shape_after = tuple(int(s) for s in data.shape[1:])
    target = tuple(float(s) for s in part.spacing)
    new_shape = compute_new_shape(shape_after, spacing, target)
    r = part.resampling_data
    resampled = tuple(new_shape) != shape_after
    in_one_piece = separate_z_axis(r.force_separate_z, spacing, target, r.anisotropy_threshold) is None
    transform = elementwise_normalization(data, part.normalization) if resampled and in_one_piece else None
    source: Handover | SlabSource
    if transform is not None:
        del data, mask  # the copy: its values are read again, normalized, from the oriented view
        tf = part.transpose_forward
        view = oriented.array.transpose(2, 1, 0).transpose(*tf)[slicer]
        source = SlabSource(view, transform)
    else:
        data = normalize(data, part.normalization, mask)
        del mask
        source = Handover(data)  # this copy's last reference: dropped inside once the zoom has copied it
        del data
    data = resample_data(source, new_shape, spacing, target, r.order, r.order_z, r.force_separate_z,
                         r.anisotropy_threshold)
    log.debug("preprocessed part=%s shape_before=%s crop=%s network_shape=%s spacing=%s->%s", part.name,
              shape_before, shape_after, data.shape[1:], spacing, target)
    return Preprocessed(np.ascontiguousarray(data, dtype=np.float32), spacing, target, shape_before, shape_after,
                        bbox)
