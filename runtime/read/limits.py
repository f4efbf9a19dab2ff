"""Bounds on the work a header may promise: voxels, decompressed bytes, frames.

A header is a promise the file's size does not back: a 31 MB ``.nii.gz`` can unpack to 30 GB, a NIfTI header can
announce 65535³ voxels in a 400-byte file, a DICOM header 65535 × 65535 pixels per frame. Everything here reads
headers only, or decompresses at most what the limits allow (plus one byte to see whether more follows), so the
time and memory spent on hostile or broken input is bounded before any array is allocated. Refusals are
:class:`~edgeseg.errors.SeriesTooLargeError` (deterministic: the watcher does not retry them).

Defaults (``limits:`` in watch_config.yaml) are sized for MRI on a workstation:

* ``max_voxels`` 2^30 (1 073 741 824): 1024 × 1024 × 1024, beyond the largest MRI series in practice (clinical
  3-D sequences are 1–100 M voxels; 0.5 mm whole-brain research scans ≈ 0.3 G). The reader holds the volume as
  float32, so 2^30 voxels are already 4 GB before any processing.
* ``max_decompressed_mb`` 8192: the image data of 2^30 voxels of int64/float64, the widest NIfTI data type
  readers accept; checked against the header's promise and enforced while unpacking.
* ``max_frames`` 20000: images (slices, frames) of one DICOM series; a 3-D series has at most a few thousand
  slices, multi-frame 4-D acquisitions (diffusion, perfusion) ≈ 10 000.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.errors import InvalidSeriesError, SeriesTooLargeError
from edgeseg.runtime.gz import ERRORS as GZIP_ERRORS, open_gzip

_MB = 1024 * 1024
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ReadLimits:
    """What one series' headers may promise. See the module docstring for the defaults' reasons."""

    max_voxels: int = 1 << 30
    max_decompressed_mb: float = 8192.0
    max_frames: int = 20000

    @property
    def max_decompressed_bytes(self) -> int:
        return int(self.max_decompressed_mb * _MB)


DEFAULT_LIMITS = ReadLimits()
_FIX = "; raise limits.{key} in watch_config.yaml only if this is a genuine image and this PC has the memory for it"


def check_voxels(shape: tuple[int, ...], what: str, limits: ReadLimits | None = None) -> int:
    """The voxel count of ``shape``; :class:`SeriesTooLargeError` above ``limits.max_voxels``."""
    limits = limits or DEFAULT_LIMITS
    voxels = 1
    for n in shape:
        voxels *= max(1, int(n))
    if voxels > limits.max_voxels:
        dims = " x ".join(str(int(n)) for n in shape)
        raise SeriesTooLargeError(
            f"{what}: the headers promise {dims} = {voxels:,} voxels, more than limits.max_voxels "
            f"({limits.max_voxels:,}); refused without reading it" + _FIX.format(key="max_voxels") + ".")
    return voxels


def check_frames(n: int, what: str, limits: ReadLimits | None = None) -> None:
    """:class:`SeriesTooLargeError` when a series holds more than ``limits.max_frames`` images."""
    limits = limits or DEFAULT_LIMITS
    if n > limits.max_frames:
        raise SeriesTooLargeError(
            f"{what}: {n:,} images (slices/frames), more than limits.max_frames ({limits.max_frames:,}); refused "
            "without reading them" + _FIX.format(key="max_frames") + ".")


def check_decompressed(nbytes: int, what: str, limits: ReadLimits | None = None) -> None:
    limits = limits or DEFAULT_LIMITS
    if nbytes > limits.max_decompressed_bytes:
        raise SeriesTooLargeError(
            f"{what}: its header promises {nbytes / _MB:,.0f} MB of image data, more than "
            f"limits.max_decompressed_mb ({limits.max_decompressed_mb:g}); refused without unpacking it"
            + _FIX.format(key="max_decompressed_mb") + ".")


# ---------------------------------------------------------------------------------------------------- NIfTI


@dataclass(frozen=True)
class HeaderOnlyImage:
    """What a header says of a NIfTI image (nibabel's header object), read without its extensions or data."""

    header: Any
    shape: tuple[int, ...]
    affine: Any

    def get_data_dtype(self) -> Any:
        return self.header.get_data_dtype()


def _open(path: Path) -> Any:
    return open_gzip(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_nifti_header(path: Path) -> HeaderOnlyImage:
    """The NIfTI-1/2 header of ``path`` (``.nii`` or ``.nii.gz``) from its first 540 bytes at most: no extension
    and no voxel is read, whatever the header promises. Raises ``ValueError`` (or nibabel's header errors) when
    the bytes are not a NIfTI header."""
    import nibabel as nib

    with _open(Path(path)) as fh:
        raw = fh.read(540)
    if len(raw) < 348:
        raise ValueError(f"only {len(raw)} bytes, shorter than a NIfTI header (348 bytes)")
    klass: Any = None
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size == 348:
            klass, n = nib.Nifti1Header, 348
        elif size == 540 and len(raw) >= 540:
            klass, n = nib.Nifti2Header, 540
        if klass is not None:
            break
    if klass is None:
        raise ValueError("not a NIfTI-1/2 header (sizeof_hdr is neither 348 nor 540)")
    header = klass(raw[:n], check=True)
    return HeaderOnlyImage(header, tuple(int(s) for s in header.get_data_shape()), header.get_best_affine())


def nifti_promise(path: Path) -> tuple[HeaderOnlyImage, int, int]:
    """(header image, voxels, bytes up to the end of the image data) a NIfTI header promises."""
    img = read_nifti_header(path)
    voxels = 1
    for n in img.shape:
        voxels *= max(1, int(n))
    end = int(img.header.get_data_offset()) + voxels * int(img.get_data_dtype().itemsize)
    return img, voxels, end


def check_nifti_header(path: Path, limits: ReadLimits | None = None) -> tuple[HeaderOnlyImage, int]:
    """Header-only limits check of a NIfTI file; returns (header image, bytes up to the end of its data)."""
    path = Path(path)
    try:
        img, _, end = nifti_promise(path)
    except FileNotFoundError as err:
        raise InvalidSeriesError(f"{path} does not exist: check the path.") from err
    except Exception as err:  # noqa: BLE001 - nibabel raises many types on malformed headers
        raise InvalidSeriesError(
            f"{path} is not a readable NIfTI file ({type(err).__name__}: {err}). Check that the file is complete "
            "(not still being copied) and re-export it.") from err
    check_voxels(img.shape, str(path), limits)
    check_decompressed(end, str(path), limits)
    return img, end


def check_nifti_file(path: Path, limits: ReadLimits | None = None) -> HeaderOnlyImage:
    """The header within the limits, and the file holding exactly the data it promises: an uncompressed file at
    least that long; a gzip stream unpacking to at least that many bytes and to nothing after them (trailing data,
    e.g. a decompression bomb of empty members, is refused). Unpacks at most the promised bytes plus one, which
    the limits bound."""
    path = Path(path)
    img, end = check_nifti_header(path, limits)
    if not path.name.lower().endswith(".gz"):
        size = path.stat().st_size
        if size < end:
            raise InvalidSeriesError(
                f"{path} is shorter than its header says ({size:,} < {end:,} bytes): the file is truncated. Copy "
                "it again.")
        return img
    check_gzip_stream(path, end)
    return img


class PromisedStream:
    """One pass over the bytes a NIfTI header promises (header, extensions and image data: ``end`` bytes), for a
    reader that consumes them as they are unpacked: :meth:`readinto` fills buffers in order (at most ``end`` bytes in
    all), :meth:`finish` checks the rest. For a ``.nii.gz``: at most ``end`` bytes plus one are unpacked, and a
    stream that is truncated or damaged before ``end`` or holds anything after it is refused
    (:class:`InvalidSeriesError`, the messages of :func:`check_gzip_stream`); an uncompressed file shorter than
    ``end`` is refused as truncated. Use as a context manager (the file is closed on leaving)."""

    def __init__(self, path: Path, end: int, *, compressed: bool | None = None) -> None:
        self.path = Path(path)
        self.end = int(end)
        self.got = 0
        self.gzip = self.path.name.lower().endswith(".gz") if compressed is None else compressed
        self._fh: Any = None

    def __enter__(self) -> PromisedStream:
        try:
            self._fh = open_gzip(self.path, "rb") if self.gzip else open(self.path, "rb")
        except FileNotFoundError as err:
            raise InvalidSeriesError(f"{self.path} does not exist: check the path.") from err
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def readinto(self, buf: memoryview) -> None:
        """Fill ``buf`` with the next ``len(buf)`` promised bytes (read in steps of at most 1 MB)."""
        view = memoryview(buf).cast("B")
        size = len(view)
        if self.got + size > self.end:
            raise ValueError(f"reading {size} bytes at {self.got} goes past the promised {self.end}")
        pos = 0
        try:
            while pos < size:
                n = self._fh.readinto(view[pos: pos + min(_CHUNK, size - pos)])
                if not n:
                    break
                pos += n
                self.got += n
        except GZIP_ERRORS as err:
            if not self.gzip:
                raise
            raise self._damaged(err) from err
        if pos < size:
            self._short()

    def _damaged(self, err: BaseException) -> InvalidSeriesError:
        return InvalidSeriesError(
            f"{self.path}: the compressed stream is truncated or damaged after {self.got:,} of {self.end:,} bytes "
            f"({type(err).__name__}: {err}). Copy it again.")

    def _short(self) -> None:
        if self.gzip:
            raise InvalidSeriesError(
                f"{self.path} unpacks to {self.got:,} bytes, fewer than the {self.end:,} its header promises: the "
                "file is truncated. Copy it again.")
        raise InvalidSeriesError(
            f"{self.path} is shorter than its header says ({self.got:,} < {self.end:,} bytes): the file is "
            "truncated. Copy it again.")

    def finish(self) -> int:
        """After all ``end`` bytes were read: for a gzip stream, unpack one more byte and refuse the file when there
        is one (trailing data). Returns the bytes unpacked or read (at most ``end + 1``)."""
        if self.got < self.end:
            scratch = bytearray(min(_CHUNK, self.end - self.got))
            while self.got < self.end:
                self.readinto(memoryview(scratch)[: min(len(scratch), self.end - self.got)])
        if not self.gzip:
            return self.got
        try:
            more = self._fh.read(1)
        except GZIP_ERRORS as err:
            raise self._damaged(err) from err
        if more:
            raise InvalidSeriesError(
                f"{self.path} holds more compressed data after the image its header describes (trailing gzip "
                "data: a damaged export or a decompression bomb); refused without unpacking the rest. Re-export the "
                "image.")
        return self.got


def check_gzip_stream(path: Path, end: int) -> int:
    """Unpack the gzip file ``path`` up to ``end`` bytes plus one: :class:`InvalidSeriesError` when it is truncated
    or damaged before ``end`` or holds anything after it. Returns the bytes unpacked (at most ``end + 1``).
    The same checks as a reader's one pass over the data (:class:`PromisedStream`), with nothing kept."""
    with PromisedStream(Path(path), end, compressed=True) as stream:
        return stream.finish()


#: the most a completeness check on the watcher's scheduler thread unpacks (larger images: checked by the worker)
SCHEDULER_UNPACK_BYTES = 64 * _MB


def quick_gzip_problem(path: Path, img: HeaderOnlyImage) -> str | None:
    """For the scheduler thread: the stream check of a ``.nii.gz`` whose header promises at most
    :data:`SCHEDULER_UNPACK_BYTES` (so at most that much is unpacked, whatever follows); larger promises are left
    to the worker (:func:`check_nifti_file`). None when fine or not checked here, else the problem."""
    voxels = 1
    for n in img.shape:
        voxels *= max(1, int(n))
    end = int(img.header.get_data_offset()) + voxels * int(img.get_data_dtype().itemsize)
    if end > SCHEDULER_UNPACK_BYTES:
        return None
    try:
        check_gzip_stream(Path(path), end)
    except InvalidSeriesError as err:
        return str(err)
    return None
