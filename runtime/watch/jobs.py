"""What one unit of watcher work is: a complete series (:class:`SeriesJob`), its safe name and its fingerprint.

A series is identified by its *key*: ``<folder>::<SeriesInstanceUID>`` for DICOM (several series may share a
folder) and the absolute file path for NIfTI/PAR input. Everything written for a series (the watcher's error
file, the segmenter's ``<name>.edgeseg/`` folder) goes into the series' own folder under the reader's name for it
(``Volume.name``: sanitized, never a path separator or "..").
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from edgeseg.runtime.naming import error_file_name, nifti_name, safe_stem
from edgeseg.typing import Shape3, Spacing

#: kinds of series
DICOM = "dicom"
NIFTI = "nifti"
PARREC = "parrec"
#: a file that is not a readable image and belongs to no series; it gets its own error file
INVALID = "invalid"

def file_series_name(path: Path) -> str:
    """The output name of a NIfTI/PAR file (its stem without image extensions), as the reader names it."""
    return nifti_name(path.name)


def invalid_file_name(path: Path) -> str:
    """The name of the error file of an unreadable file that belongs to no series (``photo.jpg`` keeps its dot)."""
    return safe_stem(path.name, max_len=120, allow_dots=True, fallback="file")


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

    @classmethod
    def from_volume(cls, volume: Any) -> SeriesGeometry:
        """The geometry of an already read :class:`~edgeseg.runtime.read.volume.Volume`."""
        return cls(volume.shape, volume.spacing, world_axes([volume.affine[:3, a] for a in range(3)]))


def world_axes(directions: Iterable[Any]) -> tuple[int, int, int]:
    """For each voxel axis direction (i, j, k), the patient axis it runs closest to; (0, 1, 2) if ambiguous."""
    import numpy as np

    axes = tuple(int(np.argmax(np.abs(np.asarray(d, dtype=float)))) for d in directions)
    return axes if len(set(axes)) == 3 else (0, 1, 2)  # type: ignore[return-value]


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
        """``<folder>/<name>.edgeseg-error.json``."""
        return self.folder / error_file_name(self.name)

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
