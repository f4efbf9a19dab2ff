"""The :class:`Volume`: one 3-D image series as the rest of the runtime sees it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np


#: the UIDs of a source file that a result's evidence lists (``DicomSource.file_uids``)
FILE_UID_KEYS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class DicomSource:
    """What the writers need to know of a DICOM series' source instances, read once by the reader.

    * ``frames``: (file, frame index or None for a single-frame file) of each slice, in k order.
    * ``sop_instance_uids``: the SOPInstanceUID of each slice's file, in k order ("" where an export has none).
    * ``file_uids``: per file of ``Volume.dicom_files``, its :data:`FILE_UID_KEYS` as the file says ("" where
      absent): what the SR's evidence lists, without reading every header again.
    * ``multiframe``: the slices are frames of one enhanced multi-frame image.
    * ``slice_spacing_mm``: the distance between slice centres along k.
    * ``excluded``: why instances of the series were not stacked -> how many (localizer, no pixel data ...).
    * ``modality``, ``study_instance_uid``, ``frame_of_reference_uid``, ``series_number``, ``transfer_syntax_uid``:
      the first instance's values ("" / None where absent).
    * ``stack``: the 3-D stack read (``Stack.to_dict()``) when the series holds several, else None.
    * ``rows_reversed``: every source image stores its rows in reverse order under an upright header (GE
      ``epi_pepolar``, :mod:`edgeseg.runtime.read.vendor`); the volume is upright (rows reversed back, as dcm2niix
      does), and a writer that references the source instances' stored pixels (the SEG) reverses the mask's rows
      again so that each frame overlays its source frame as stored.
    """

    frames: tuple[tuple[Path, int | None], ...] = ()
    sop_instance_uids: tuple[str, ...] = ()
    file_uids: tuple[tuple[str, ...], ...] = ()
    multiframe: bool = False
    slice_spacing_mm: float = 1.0
    excluded: Mapping[str, int] = field(default_factory=dict)
    modality: str = ""
    study_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    series_number: int | None = None
    transfer_syntax_uid: str = ""
    stack: Mapping[str, object] | None = None
    rows_reversed: bool = False


@dataclass(frozen=True)
class Volume:
    """One 3-D series, whatever file format it came from.

    * ``array``: voxel values, shape (I, J, K), float32, rescale slope/intercept already applied.
    * ``affine``: 4x4 float64 mapping voxel (i, j, k, 1) to RAS+ world millimetres (nibabel convention).
      Masks written for this volume carry exactly this shape and affine.
    * ``source``: the file (NIfTI, PAR) or folder (DICOM) the series was read from.
    * ``kind``: "nifti", "parrec" or "dicom".
    * ``series_uid``: DICOM SeriesInstanceUID, or None for non-DICOM input (and DICOM exported without one).
    * ``series_id``: the DICOM series' identity (``SeriesRef.series_id``: the UID, or ``nouid-<hex>`` derived from
      the headers of a series without one), or None; with ``source`` it makes the series key results record.
    * ``stack``: the label of the 3-D stack read from a series that holds several (``echo2``; ``SeriesRef.stack``),
      or None; ``dicom.stack`` describes it.
    * ``name``: a file-name-safe stem for outputs (never contains path separators or "..").
    * ``dicom_files``: DICOM source instances in slice order (k = 0..K-1); one file for enhanced multi-frame.
    * ``nifti_header``: the original NIfTI header when read from NIfTI (outputs copy its qform/sform codes).
    * ``dicom``: the source instances' facts the writers need (:class:`DicomSource`); empty for NIfTI/PAR input.
    """

    array: np.ndarray
    affine: np.ndarray
    source: Path
    kind: str
    name: str
    series_uid: str | None = None
    description: str = ""
    dicom_files: tuple[Path, ...] = ()
    nifti_header: Any = None
    dicom: DicomSource = field(default_factory=DicomSource)
    series_id: str | None = None
    stack: str | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (di, dj, dk) in mm, from the affine's column norms."""
        s = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return (float(s[0]), float(s[1]), float(s[2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        i, j, k = self.array.shape
        return (int(i), int(j), int(k))
