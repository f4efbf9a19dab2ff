"""NIfTI-1/2 (``.nii``, ``.nii.gz``) -> :class:`Volume` through nibabel."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.naming import nifti_name
from edgeseg.runtime.read.limits import ReadLimits, check_nifti_file
from edgeseg.runtime.read.volume import Volume

log = logging.getLogger(__name__)


def is_nifti_path(path: Path) -> bool:
    """True for names ending in .nii or .nii.gz (any case)."""
    lower = path.name.lower()
    return lower.endswith(".nii") or lower.endswith(".nii.gz")


def to_3d(data_shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """Check that an image is 3-D after dropping trailing singleton dimensions; return the 3-D shape."""
    shape = tuple(int(s) for s in data_shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 3 and min(shape) >= 1:
        return (shape[0], shape[1], shape[2])
    if len(shape) > 3:
        raise InvalidSeriesError(
            f"{path} holds a {len(shape)}-D image of shape {shape} (several volumes: time points, echoes or "
            "diffusion directions); edgeseg segments one 3-D volume. Split it into 3-D files (e.g. with "
            "nibabel or fslsplit) and give one of them."
        )
    raise InvalidSeriesError(
        f"{path} holds a {len(shape)}-D image of shape {shape}; edgeseg needs a 3-D volume. Export the series "
        "as a 3-D image."
    )


def finite_float32(data: np.ndarray, path: Path) -> np.ndarray:
    """Return ``data`` as C-contiguous float32 with NaN/inf replaced by 0 (warned about)."""
    arr = np.ascontiguousarray(data, dtype=np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        log.warning("%s: %d non-finite voxel values (NaN/inf) replaced by 0", path, int(bad.sum()))
        arr[bad] = 0.0
    return arr


def check_affine(affine: np.ndarray, path: Path) -> np.ndarray:
    """Return the affine as float64 4x4 after checking it is finite and invertible."""
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise InvalidSeriesError(
            f"{path} has no usable voxel-to-world affine (singular or not finite): {aff.tolist()}. "
            "Re-export the image with valid orientation (qform/sform) information."
        )
    return aff


def read_nifti(path: Path, limits: ReadLimits | None = None) -> Volume:
    """Read a NIfTI file into a :class:`Volume`.

    Geometry: ``array`` is nibabel's data array, shape (I, J, K), float32 with scl_slope/scl_inter applied;
    ``affine`` is nibabel's ``img.affine`` (sform if its code is set, else qform, else pixdim), voxel -> RAS+ mm.
    A trailing singleton 4th dimension is dropped; a true 4-D image raises :class:`InvalidSeriesError`.
    The original header is kept in ``nifti_header`` (writers copy its qform/sform codes).
    ``limits``: what the header may promise (voxels, unpacked bytes); checked on the header before any voxel is
    read, and a gzip stream is unpacked at most that far (trailing data refused): :func:`check_nifti_file`.
    """
    import nibabel as nib

    path = Path(path)
    if path.exists():
        check_nifti_file(path, limits)
    try:
        img: Any = nib.load(str(path))
    except FileNotFoundError as err:
        raise InvalidSeriesError(f"{path} does not exist: check the path.") from err
    except Exception as err:  # nibabel raises many types on malformed files
        raise InvalidSeriesError(
            f"{path} is not a readable NIfTI file ({type(err).__name__}: {err}). Check that the file is complete "
            "(not still being copied) and re-export it."
        ) from err
    shape = to_3d(img.shape, path)
    try:
        data = img.get_fdata(dtype=np.float32)
    except Exception as err:
        raise InvalidSeriesError(
            f"{path}: the voxel data could not be read ({type(err).__name__}: {err}); the file is probably "
            "truncated. Copy it again."
        ) from err
    array = finite_float32(data.reshape(shape), path)
    header = img.header
    if int(header.get("qform_code", 0)) == 0 and int(header.get("sform_code", 0)) == 0:
        log.warning("%s has neither qform nor sform set; using the voxel sizes only (orientation unknown)", path)
    affine = check_affine(img.affine, path)
    vol = Volume(
        array=array,
        affine=affine,
        source=path,
        kind="nifti",
        name=nifti_name(path.name),
        description=path.name,
        nifti_header=header.copy(),
    )
    log.info("read NIfTI %s: shape %s, spacing %s", path, vol.shape, tuple(round(s, 4) for s in vol.spacing))
    return vol
