"""Real-scanner DICOM cases of issue 11 written as vendors and exporters write them (tests only).

Each writer starts from a classic MR series of the demo writer (:func:`edgeseg.demo.dicom_series.write_dicom_series`)
and edits headers with pydicom; each says which fields it sets and why. Files are only ever written under the
folder given.

* :func:`blank_uids`: a de-identified export whose SOP, Series and Study Instance UIDs are present but empty.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom

from edgeseg.demo.dicom_series import write_dicom_series


def small_volume(n: int = 6, *, seed: int = 0, shape: tuple[int, int] = (12, 10)) -> tuple[np.ndarray, np.ndarray]:
    """(int16 array (I, J, K) with values 0..999, affine at 2 mm): a small volume for DICOM cases."""
    array = np.random.default_rng(seed).integers(0, 1000, size=(*shape, n)).astype(np.int16)
    return array, np.diag([2.0, 2.0, 2.0, 1.0])


def blank_uids(files: Sequence[Path]) -> list[Path]:
    """De-identification that empties the UIDs, a pattern of real anonymisers: SOPInstanceUID (0008,0018),
    StudyInstanceUID (0020,000D) and SeriesInstanceUID (0020,000E) are kept as elements with an empty value, and so
    is the file meta's MediaStorageSOPInstanceUID (0002,0003). FrameOfReferenceUID, SeriesNumber,
    SeriesDescription and all geometry are left as the scanner wrote them."""
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ""
        ds.SeriesInstanceUID = ""
        ds.StudyInstanceUID = ""
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(path, enforce_file_format=False)
    return list(files)


def uidless_series(folder: Path, n: int = 6, *, seed: int = 0, description: str = "t1 deid",
                   **kwargs: Any) -> list[Path]:
    """A small classic MR series (:func:`small_volume`) exported with empty UIDs (:func:`blank_uids`)."""
    return blank_uids(write_dicom_series(small_volume(n, seed=seed), folder, series_description=description,
                                         **kwargs))
