"""The :class:`SeriesRef`: one series found on disk, before its pixels are read."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edgeseg.runtime.naming import dicom_series_name, nifti_name, series_key
from edgeseg.runtime.read.geometry import SeriesGeometry

#: kinds of series (``SeriesRef.kind``, ``Volume.kind``, and the watcher's job kind)
DICOM: Final = "dicom"
NIFTI: Final = "nifti"
PARREC: Final = "parrec"


@dataclass(frozen=True)
class SeriesRef:
    """A series found on disk from headers only (by :func:`edgeseg.runtime.read.discover_series`, or by the
    watcher's completion tracker as its files arrive); pass it to ``read_series``.

    * ``kind``: "dicom", "nifti" or "parrec".
    * ``source``: the folder holding the series' DICOM files (where results are written), or the NIfTI/PAR file.
    * ``files``: the image files of the series, sorted by path (not by slice position; that is decided when
      reading). For DICOM: every instance of the series that has image geometry (localizers included; they
      are dropped while reading). For NIfTI/PAR: the one file.
    * ``uid``: the DICOM SeriesInstanceUID (None for NIfTI/PAR, and for a DICOM series exported without one).
    * ``series_id``: for DICOM, the series' identity (:func:`~edgeseg.runtime.read.headers.series_identity`): its
      SeriesInstanceUID, or ``nouid-<hex>`` derived from its headers when it has none; None for NIfTI/PAR.
    * ``description``: SeriesDescription (DICOM) or the file name.
    * ``modality``: DICOM Modality ("MR", ...), or "" for NIfTI/PAR.
    * ``expected_instances``: how many instances the headers announce
      (:func:`~edgeseg.runtime.read.headers.expected_instances`; a hint for series completion), else None.
    * ``geometry``: the volume's size as the headers describe it (:class:`SeriesGeometry`), when known.
    """

    kind: str
    source: Path
    files: tuple[Path, ...]
    uid: str | None = None
    description: str = ""
    modality: str = ""
    series_number: int | None = None
    expected_instances: int | None = None
    geometry: SeriesGeometry | None = None
    series_id: str | None = None

    @property
    def identity(self) -> str | None:
        """What identifies a DICOM series in its folder: ``series_id``, else ``uid``; None for NIfTI/PAR."""
        return self.series_id or self.uid

    @property
    def name(self) -> str:
        """The series' output name (``<name>.edgeseg/``), as the reader names the :class:`Volume` it reads."""
        if self.kind == DICOM:
            return dicom_series_name(self.description, self.identity or "")
        return nifti_name(self.source.name)

    @property
    def folder(self) -> Path:
        """The folder results are written into: the DICOM folder, or the folder holding the NIfTI/PAR file."""
        return self.source if self.kind == DICOM else self.source.parent

    @property
    def key(self) -> str:
        """The series' identity (:func:`edgeseg.runtime.naming.series_key`): the watcher's job key."""
        return series_key(self.kind, os.fspath(self.source), self.identity)
