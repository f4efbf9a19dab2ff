"""NIfTI-1/2 (``.nii``, ``.nii.gz``) -> :class:`Volume` through nibabel."""
from __future__ import annotations

import logging
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.arrays import PLANE_BLOCK, copy_blocked, usable_cores
from edgeseg.runtime.naming import nifti_name
from edgeseg.runtime.read.limits import (
    HeaderOnlyImage,
    PromisedStream,
    ReadLimits,
    check_nifti_file,
    check_nifti_header,
)
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

    Geometry: ``array`` is nibabel's data array, shape (I, J, K), C-contiguous float32 with scl_slope/scl_inter
    applied (the values of nibabel's ``get_fdata(dtype=np.float32)``, NaN/inf replaced by 0 with a warning);
    ``affine`` is nibabel's ``img.affine`` (sform if its code is set, else qform, else pixdim), voxel -> RAS+ mm.
    A trailing singleton 4th dimension is dropped; a true 4-D image raises :class:`InvalidSeriesError`.
    The original header is kept in ``nifti_header`` (writers copy its qform/sform codes).
    ``limits``: what the header may promise (voxels, unpacked bytes); checked on the header before any voxel is
    read. The file is then read once (:func:`_read_one_pass`): header, extensions and voxels unpacked in one pass
    over a gzip stream (at most the promised bytes plus one; truncated streams and trailing data refused, as
    :func:`~edgeseg.runtime.read.limits.check_nifti_file` does), the voxels converted slab by slab straight into
    the C-ordered float32 array. Data types other than integers and floats (RGB, complex) and unusual layouts go
    through nibabel's own reader after :func:`check_nifti_file`.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidSeriesError(f"{path} does not exist: check the path.")
    head, end = check_nifti_header(path, limits)
    if _one_pass_layout(head) is not None:
        img, array = _read_one_pass(path, head, end)
    else:
        img, array = _read_with_nibabel(path, limits)
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


def _unreadable(path: Path, err: Exception) -> InvalidSeriesError:
    return InvalidSeriesError(
        f"{path} is not a readable NIfTI file ({type(err).__name__}: {err}). Check that the file is complete "
        "(not still being copied) and re-export it."
    )


def _read_with_nibabel(path: Path, limits: ReadLimits | None) -> tuple[Any, np.ndarray]:
    """nibabel's reader (``get_fdata``) after the whole-file checks: for what the one pass does not cover."""
    import nibabel as nib

    check_nifti_file(path, limits)
    try:
        img: Any = nib.load(str(path))
    except FileNotFoundError as err:
        raise InvalidSeriesError(f"{path} does not exist: check the path.") from err
    except Exception as err:  # nibabel raises many types on malformed files
        raise _unreadable(path, err) from err
    return img, nibabel_float32(img, path, "the voxel data", "the file is probably truncated. Copy it again.")


def nibabel_float32(img: Any, path: Path, what: str, remedy: str) -> np.ndarray:
    """A nibabel image's data as a 3-D float32 array (:func:`to_3d`, :func:`finite_float32`): the NIfTI and the
    PAR/REC readers' one route through ``get_fdata``. A read that fails names ``path``, ``what`` was read and the
    ``remedy``."""
    shape = to_3d(img.shape, path)
    try:
        data = img.get_fdata(dtype=np.float32)
    except Exception as err:
        raise InvalidSeriesError(f"{path}: {what} could not be read ({type(err).__name__}: {err}); {remedy}") from err
    return finite_float32(data.reshape(shape), path)


#: raw bytes of one slab of K slices converted at a time (and at most this many slices): what the reader holds of
#: the raw array besides the float32 volume (two slabs: one unpacking, one being copied in by
#: :func:`~edgeseg.runtime.arrays.copy_blocked`); measured on 512x512x400 int16 with numpy's one strided copy per
#: slab: 64 slices 0.8 s, 8 slices 1.1 s, the whole array at once 2.6 s; in blocks on 2 cores the read is 0.71 s
_SLAB_BYTES = 64 * 1024 * 1024
_SLAB_SLICES = 64


def _one_pass_layout(head: HeaderOnlyImage) -> tuple[int, int, int] | None:
    """The 3-D shape when the one-pass reader handles this header (integer or float voxels, 3-D after dropping
    trailing singletons, data after the header and its extension flag); None otherwise."""
    shape = tuple(int(s) for s in head.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    dtype = np.dtype(head.get_data_dtype())
    sizeof_hdr = int(head.header.sizeof_hdr)
    if len(shape) != 3 or min(shape) < 1 or dtype.kind not in "iuf" or dtype.itemsize not in (1, 2, 4, 8):
        return None
    if int(head.header.get_data_offset()) < sizeof_hdr + 4:
        return None
    return (shape[0], shape[1], shape[2])


def _read_one_pass(path: Path, head: HeaderOnlyImage, end: int) -> tuple[Any, np.ndarray]:
    """Header, extensions and voxels of ``path`` in one pass (:class:`PromisedStream`), the voxels converted slab
    by slab (``_SLAB_SLICES`` K slices of the on-disk Fortran-ordered array) into a C-contiguous float32 (I, J, K)
    array: nibabel's ``img.dataobj`` scaling applied to each slab (:func:`scale_into`), so the values are those of
    ``get_fdata(dtype=np.float32)``. Holds the float32 array and one raw slab, never the whole raw array."""
    import nibabel as nib

    shape = _one_pass_layout(head)
    assert shape is not None
    offset = int(head.header.get_data_offset())
    klass: Any = nib.Nifti2Image if int(head.header.sizeof_hdr) == 540 else nib.Nifti1Image
    with PromisedStream(path, end) as stream:
        prefix = bytearray(offset)
        stream.readinto(memoryview(prefix))
        try:
            img: Any = klass.from_bytes(bytes(prefix))  # the header and its extensions, as nib.load parses them
        except Exception as err:  # noqa: BLE001 - nibabel raises many types on malformed headers
            raise _unreadable(path, err) from err
        proxy = img.dataobj
        dtype = np.dtype(proxy.dtype)
        if int(proxy.offset) != offset or getattr(proxy, "order", "F") != "F" or dtype != np.dtype(
                head.get_data_dtype()):
            raise _unreadable(path, ValueError("the header's data layout changed between two reads"))
        n_i, n_j, n_k = shape
        plane = n_i * n_j * dtype.itemsize
        slab = max(1, min(_SLAB_SLICES, n_k, _SLAB_BYTES // max(1, plane)))
        array = np.empty(shape, np.float32)
        bad = 0
        with closing(_slabs(stream, plane, slab, n_k)) as slabs:  # on an error: the thread is done before the file
            for k0, n, raw in slabs:                                # is closed
                voxels = np.ndarray((n_i, n_j, n), dtype=dtype, buffer=raw, order="F")
                bad += scale_into(array[:, :, k0: k0 + n], voxels, proxy.slope, proxy.inter)
        stream.finish()
    if bad:
        log.warning("%s: %d non-finite voxel values (NaN/inf) replaced by 0", path, bad)
    return img, array


_Slabs = Generator[tuple[int, int, np.ndarray], None, None]


def _slabs(stream: PromisedStream, plane: int, slab: int, n_k: int) -> _Slabs:
    """(first slice, slices, raw bytes) of each slab of ``slab`` K slices read from ``stream`` in order. Where the
    process has more than one core, the next slab is unpacked in a second thread (zlib and numpy's copies release
    the GIL) while the caller converts this one: two slab buffers in turn; a read error is raised here."""
    starts = list(range(0, n_k, slab))
    buffers = [np.empty(plane * slab, np.uint8) for _ in range(2 if len(starts) > 1 and usable_cores() > 1 else 1)]

    def fill(i: int) -> np.ndarray:
        buf = buffers[i % len(buffers)]
        stream.readinto(buf.data[: plane * min(slab, n_k - starts[i])])
        return buf

    if len(buffers) == 1:
        for i, k0 in enumerate(starts):
            yield k0, min(slab, n_k - k0), fill(i)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="edgeseg-read") as pool:
        pending = pool.submit(fill, 0)
        for i, k0 in enumerate(starts):
            buf = pending.result()
            if i + 1 < len(starts):  # the other buffer: the caller finished converting it before asking for this one
                pending = pool.submit(fill, i + 1)
            yield k0, min(slab, n_k - k0), buf


def scale_into(out: np.ndarray, raw: np.ndarray, slope: Any, inter: Any) -> int:
    """``out[...] = raw * slope + inter`` as float32, exactly as nibabel's ``ArrayProxy`` computes
    ``np.asarray(proxy, dtype=np.float32)`` (its ``_get_scaled``: the factors cast to float32 where that is safe,
    ``volumeutils.apply_read_scaling`` choosing the working type, then the cast to float32), element for element,
    so a slab gives the values of the whole array. NaN/inf in ``out`` are set to 0; returns how many there were
    (none can arise from integer data without scaling, which is not scanned)."""
    from nibabel.volumeutils import apply_read_scaling

    scl_slope = np.asanyarray(slope)
    scl_inter = np.asanyarray(inter)
    if np.can_cast(scl_slope, np.float32):
        scl_slope = scl_slope.astype(np.float32)
    if np.can_cast(scl_inter, np.float32):
        scl_inter = scl_inter.astype(np.float32)
    scaled = apply_read_scaling(raw, scl_slope, scl_inter)
    # the slab (Fortran order) goes into the C-ordered volume in blocks on the process's cores: numpy's one
    # strided copy cost 0.82 s for 400 planes of 512x512, copy_blocked 0.14-0.21 s (the same values)
    if scaled is raw and raw.dtype.kind in "iu" and raw.dtype.itemsize <= 4:
        # nibabel's cast (through float64 for 32-bit integers) is exact up to the one rounding to float32: the
        # same values as the direct cast, without the slab's intermediate copy; and always finite
        copy_blocked(out, raw, PLANE_BLOCK, usable_cores())
        return 0
    scaled = scaled.astype(np.promote_types(scaled.dtype, np.float32), copy=False)
    copy_blocked(out, scaled, PLANE_BLOCK, usable_cores())
    bad = ~np.isfinite(out)
    count = int(np.count_nonzero(bad))
    if count:
        out[bad] = 0.0
    return count
