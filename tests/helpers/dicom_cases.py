"""Real-scanner DICOM cases of issue 11 written as vendors and exporters write them (tests only).

Each writer starts from a classic MR series of the demo writer (:func:`edgeseg.demo.dicom_series.write_dicom_series`)
and edits headers with pydicom; each says which fields it sets and why. Files are only ever written under the
folder given.

* :func:`blank_uids`: a de-identified export whose SOP, Series and Study Instance UIDs are present but empty.
* :func:`siemens_mosaic`: Siemens EPI/DWI mosaics, one file per volume holding all its slices tiled in one frame.
* :func:`rgb_image`: a colour (RGB) image with MR geometry, as a console's colour map or screen capture.
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


def siemens_mosaic(folder: Path, volumes: int = 2, *, slices: int = 9, tile: tuple[int, int] = (12, 10),
                   description: str = "ep2d_diff_b50_800", seed: int = 0) -> list[Path]:
    """A Siemens EPI/DWI series as the console writes it in mosaic form: one classic MR file per volume (b-value),
    all at the same ImagePositionPatient, each holding ``slices`` slices of ``tile`` (columns, rows) tiled into one
    big frame (Rows, Columns = ceil(sqrt(slices)) x the tile). Set by hand: ImageType ORIGINAL\\PRIMARY\\DIFFUSION\\
    NONE\\ND\\MOSAIC, the private creator (0019,0010) "SIEMENS MR HEADER" and its NumberOfImagesInMosaic
    (0019,100A, US) = ``slices``, and the same SeriesInstanceUID for every volume."""
    from pydicom.uid import generate_uid

    grid = int(np.ceil(np.sqrt(slices)))
    cols, rows = tile
    series_uid, study_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    out: list[Path] = []
    for v in range(volumes):
        big = np.random.default_rng(seed + v).integers(0, 1000, size=(cols * grid, rows * grid, 1)).astype(np.int16)
        (path,) = write_dicom_series((big, np.diag([2.0, 2.0, 4.0, 1.0])), folder, description,
                                     series_uid=series_uid, study_uid=study_uid, frame_of_reference_uid=for_uid,
                                     image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND", "MOSAIC"))
        ds = pydicom.dcmread(path)
        block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        block.add_new(0x0A, "US", slices)
        ds.InstanceNumber = v + 1
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def rgb_image(folder: Path, *, description: str = "ADC colour map", seed: int = 0) -> Path:
    """A colour image with MR geometry, as a console exports a colour map or screen capture: a one-file MR series
    of its own whose pixel module is set by hand to SamplesPerPixel 3, PhotometricInterpretation RGB,
    PlanarConfiguration 0, 8 bits allocated/stored (HighBit 7), unsigned, with RGB pixel data; ImageType
    DERIVED\\SECONDARY. Position, orientation and spacing are those of a normal slice."""
    array, affine = small_volume(1, seed=seed)
    (path,) = write_dicom_series((array, affine), folder, description, image_type=("DERIVED", "SECONDARY"))
    ds = pydicom.dcmread(path)
    rows, cols = int(ds.Rows), int(ds.Columns)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        delattr(ds, keyword)
    ds.PixelData = np.random.default_rng(seed).integers(0, 256, size=(rows, cols, 3), dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
