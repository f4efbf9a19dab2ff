"""What one unit of watcher work is: a complete series (:class:`SeriesJob`) with the watcher's bookkeeping.

A job carries the reader's own description of the series, a :class:`~edgeseg.runtime.read.SeriesRef` built from
headers by the completion tracker with the read stage's header API, and hands exactly that to the segmenter. What
the job adds is bookkeeping: the input fingerprint the job store records, what the tracker already knows is wrong
(``problem``, unreadable files beside the series), notes, and whether there is nothing to do.

A series is identified by its *key* (``SeriesRef.key``): ``<folder>::<SeriesInstanceUID>`` for DICOM (several
series may share a folder) and the absolute file path for NIfTI/PAR input. Everything written for a series (the
watcher's error file, the segmenter's ``<name>.edgeseg/`` folder) goes into the series' own folder under the
reader's name for it (``SeriesRef.name`` = ``Volume.name``: sanitized, never a path separator or "..").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from edgeseg.runtime.naming import error_file_name, unreadable_file_name
from edgeseg.runtime.read import DICOM, SeriesGeometry, SeriesRef

#: a file that is not a readable image and belongs to no series; it gets its own error file
INVALID: Final = "invalid"


@dataclass(frozen=True)
class SeriesJob:
    """A complete series, handed from the completion tracker to a worker.

    ``key``, ``kind`` ("dicom", "nifti", "parrec" or ``INVALID``), ``folder`` and ``name``: what the job store
    records and where the error file goes (:meth:`of` takes them from the series' ref). ``files``: every input
    file, fingerprinted (DICOM: the instances of this series, non-image objects included; NIfTI: the file; PAR/REC:
    both files). ``ref``: what the reader opens (None for an ``INVALID`` file, which has nothing to read).
    ``problem``: set when the watcher already knows the series cannot be segmented (no image instance, file does
    not open); the worker then records the failure without calling the segmenter. ``skip``: set when there is
    nothing to do (only localizer images, which readers drop); the worker forgets the series, logging the reason.
    ``notes``: things worth logging (fewer instances than the headers announce; invalid files seen in the same
    folder).
    """

    key: str
    kind: str
    folder: Path
    name: str
    files: tuple[Path, ...]
    fingerprint: str
    ref: SeriesRef | None = None
    problem: str | None = None
    invalid_files: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    skip: str | None = None

    @classmethod
    def of(cls, ref: SeriesRef, files: tuple[Path, ...], fingerprint: str, *, problem: str | None = None,
           invalid_files: tuple[tuple[str, str], ...] = (), notes: tuple[str, ...] = (),
           skip: str | None = None) -> SeriesJob:
        """The job of the series ``ref`` (its key, kind, folder and name), with the watcher's bookkeeping."""
        return cls(ref.key, ref.kind, ref.folder, ref.name, files, fingerprint, ref, problem, invalid_files, notes,
                   skip)

    @classmethod
    def invalid_file(cls, path: Path, error: str, fingerprint: str) -> SeriesJob:
        """The job of an unreadable file that belongs to no series: it ends in an error file of its own."""
        return cls(str(path), INVALID, path.parent, unreadable_file_name(path.name), (path,), fingerprint,
                   problem=f"{path.name} is not a readable image: {error}", invalid_files=((path.name, error),))

    @property
    def series_uid(self) -> str | None:
        return self.ref.uid if self.ref is not None else None

    @property
    def description(self) -> str:
        return self.ref.description if self.ref is not None else ""

    @property
    def expected_instances(self) -> int | None:
        return self.ref.expected_instances if self.ref is not None else None

    @property
    def geometry(self) -> SeriesGeometry | None:
        """The volume's size as the headers describe it (for the planner and the read limits), when known."""
        return self.ref.geometry if self.ref is not None else None

    @property
    def image_files(self) -> tuple[Path, ...]:
        """The DICOM files the reader opens: the instances with pixel geometry (all of the series' files when none
        has: such a job has a ``problem``); empty for other kinds."""
        return self.ref.files if self.ref is not None and self.ref.kind == DICOM else ()

    @property
    def error_file(self) -> Path:
        """``<folder>/<name>.edgeseg-error.json``."""
        return self.folder / error_file_name(self.name)

    @property
    def source(self) -> Path:
        """What a reader opens: the DICOM folder, the NIfTI file or the PAR file."""
        return self.ref.source if self.ref is not None else Path(self.key)
