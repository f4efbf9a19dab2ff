"""The :class:`SeriesRef`: one series found on disk, before its pixels are read."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SeriesRef:
    """A series found by :func:`edgeseg.runtime.read.discover_series`; pass it to ``read_series``.

    * ``kind``: "dicom", "nifti" or "parrec".
    * ``source``: the folder holding the series' DICOM files (where results are written), or the NIfTI/PAR file.
    * ``files``: the image files of the series, sorted by path (not by slice position; that is decided when
      reading). For DICOM: every instance of the series that has image geometry (localizers included; they
      are dropped while reading). For NIfTI/PAR: the one file.
    * ``uid``: the DICOM SeriesInstanceUID (None for NIfTI/PAR).
    * ``description``: SeriesDescription (DICOM) or the file name.
    * ``modality``: DICOM Modality ("MR", ...), or "" for NIfTI/PAR.
    * ``expected_instances``: ImagesInAcquisition when the headers give it (a hint for series completion), else
      None.
    """

    kind: str
    source: Path
    files: tuple[Path, ...]
    uid: str | None = None
    description: str = ""
    modality: str = ""
    series_number: int | None = None
    expected_instances: int | None = None
