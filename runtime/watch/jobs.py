"""What one unit of watcher work is: a complete series (:class:`SeriesJob`), its safe name and its fingerprint.

A series is identified by its *key*: ``<folder>::<SeriesInstanceUID>`` for DICOM (several series may share a
folder) and the absolute file path for NIfTI/PAR input. Everything the watcher writes for a series (the error
file; the segmenter writes the ``<name>.edgeseg/`` folder) goes into the series' own folder under a name built by
:func:`safe_name`, which can never contain a path separator or "..".
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from edgeseg.typing import Shape3, Spacing

#: kinds of series
DICOM = "dicom"
NIFTI = "nifti"
PARREC = "parrec"
#: a file that is not a readable image and belongs to no series; it gets its own error file
INVALID = "invalid"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 80
#: names Windows refuses for files, whatever the extension
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_name(text: str, fallback: str = "series") -> str:
    """A file-name-safe stem: ASCII letters, digits, ``.``, ``_`` and ``-`` only, no leading dot, no "..",
    at most 80 characters, never empty and never a reserved Windows device name."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    name = _UNSAFE.sub("_", text)
    name = re.sub(r"\.{2,}", "_", name)  # no ".." anywhere
    name = re.sub(r"_{2,}", "_", name).strip("._-")
    name = name[:_MAX_NAME].rstrip("._-")
    if not name or name.split(".")[0].upper() in _RESERVED:
        name = f"{fallback}_{name}" if name else fallback
    return name


def short_hash(text: str, n: int = 8) -> str:
    """First ``n`` hex digits of sha1(text): a stable suffix that keeps names of same-named series apart."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def dicom_series_name(description: str, uid: str) -> str:
    """The output name of a DICOM series: the reader's own (``Volume.name``) so that the error file and the
    ``<name>.edgeseg/`` folder of one series share ``<name>``; a local equivalent if the reader is absent."""
    try:
        from edgeseg.runtime.read._naming import dicom_series_name as reader_name
    except ImportError:
        digits = re.sub(r"\D", "", uid or "")[-8:] or short_hash(uid or "")
        return f"{safe_name(description, fallback='series')}_{digits}"
    return str(reader_name(description, uid))


def file_series_name(path: Path) -> str:
    """The output name of a NIfTI/PAR file (its stem without image extensions), as the reader names it."""
    try:
        from edgeseg.runtime.read._naming import nifti_name
    except ImportError:
        name = path.name
        for ext in (".nii.gz", ".nii", ".par", ".rec"):
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
                break
        return safe_name(name, fallback="image")
    return str(nifti_name(path.name))


def check_name(name: str) -> str:
    """``name`` if it is a safe file-name stem (no separator, no "..", no leading dot), else ValueError."""
    if (not name or "/" in name or "\\" in name or ".." in name or name.startswith(".") or "\x00" in name
            or os.sep in name or (os.altsep and os.altsep in name)):
        raise ValueError(f"unsafe output name {name!r}")
    return name


def error_file_path(folder: Path, name: str) -> Path:
    """``<folder>/<name>.edgeseg-error.json``; raises ValueError if the name could leave the folder."""
    return folder / f"{check_name(name)}.edgeseg-error.json"


@dataclass(frozen=True)
class FileStamp:
    """(name relative to the series folder, size in bytes, mtime in ns) of one input file."""

    rel: str
    size: int
    mtime_ns: int


def stamp_files(folder: Path, files: Iterable[Path]) -> tuple[FileStamp, ...]:
    """Stat every file; files that vanished are left out (the fingerprint then differs, which is the point)."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            continue
        try:
            rel = f.relative_to(folder).as_posix()
        except ValueError:
            rel = f.as_posix()
        out.append(FileStamp(rel, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out, key=lambda s: s.rel))


def fingerprint(stamps: Iterable[FileStamp]) -> str:
    """sha256 over the sorted (relative name, size, mtime_ns) list: changes when any input file is added,
    removed, rewritten or touched."""
    digest = hashlib.sha256()
    for s in sorted(stamps, key=lambda s: s.rel):
        digest.update(f"{s.rel}\0{s.size}\0{s.mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class SeriesGeometry:
    """Size of the input volume as the headers describe it, for the time-budget planner.

    ``shape`` and ``spacing`` are per voxel axis (i, j, k) as in :class:`~edgeseg.runtime.read.volume.Volume`
    (for DICOM: i along a row = Columns, j down a column = Rows, k across slices). ``world_axes[a]`` is the
    patient axis (0 = x/L-R, 1 = y/A-P, 2 = z/S-I) voxel axis ``a`` runs closest to; (0, 1, 2) when unknown.
    """

    shape: Shape3
    spacing: Spacing
    world_axes: tuple[int, int, int] = (0, 1, 2)

    @property
    def voxels(self) -> int:
        return int(self.shape[0]) * int(self.shape[1]) * int(self.shape[2])


@dataclass(frozen=True)
class SeriesJob:
    """A complete series, handed from the completion tracker to a worker.

    ``files``: every input file (DICOM instances of this series; the NIfTI file; the PAR and REC files).
    ``problem``: set when the watcher already knows the series cannot be segmented (no image instance, file does
    not open); the worker then records the failure without calling the segmenter. ``skip``: set when there is
    nothing to do (only localizer images, which readers drop); the worker forgets the series silently. ``notes``: things worth
    logging (fewer instances than the headers announce; invalid files seen in the same folder).
    """

    key: str
    kind: str
    folder: Path
    name: str
    files: tuple[Path, ...]
    fingerprint: str
    series_uid: str | None = None
    description: str = ""
    expected_instances: int | None = None
    geometry: SeriesGeometry | None = None
    problem: str | None = None
    invalid_files: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: DICOM instances with pixel geometry (what a reader stacks); empty for other kinds
    image_files: tuple[Path, ...] = ()
    #: set when there is nothing to segment and nothing wrong (a series of localizer images only)
    skip: str | None = None
    series_number: int | None = None

    @property
    def error_file(self) -> Path:
        return error_file_path(self.folder, self.name)

    @property
    def source(self) -> Path:
        """What a reader opens: the DICOM folder, the NIfTI file or the PAR file."""
        return self.folder if self.kind == DICOM else Path(self.key)


@dataclass(frozen=True)
class SeriesInfo:
    """A series the tracker has just seen for the first time (for the store's ``discovered`` rows)."""

    key: str
    kind: str
    folder: Path
    name: str
    series_uid: str | None = None
    description: str = ""
