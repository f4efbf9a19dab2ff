"""Real-scanner DICOM cases of issue 11 written as vendors and exporters write them (tests only).

Each writer starts from a classic MR series of the demo writer (:func:`edgeseg.demo.dicom_series.write_dicom_series`)
and edits headers with pydicom; each says which fields it sets and why. Files are only ever written under the
folder given.

* :func:`blank_uids`: a de-identified export whose SOP, Series and Study Instance UIDs are present but empty.
* :func:`siemens_mosaic`: Siemens EPI/DWI mosaics, one file per volume holding all its slices tiled in one frame.
* :func:`neutral_mosaic`: a Siemens EPI mosaic that no selection rule skips (refused as a mosaic).
* :func:`rgb_image`: a colour (RGB) image with MR geometry, as a console's colour map or screen capture.
* :func:`multi_echo_series`: two echoes (or Dixon in/opposed phase) at the same positions in one classic series;
  :func:`multi_echo_enhanced`: the same in one enhanced MR file, told apart per frame.
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
                   description: str = "ep2d_diff_b50_800", seed: int = 0,
                   image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND", "MOSAIC")
                   ) -> list[Path]:
    """A Siemens EPI/DWI series as the console writes it in mosaic form: one classic MR file per volume (b-value),
    all at the same ImagePositionPatient, each holding ``slices`` slices of ``tile`` (columns, rows) tiled into one
    big frame (Rows, Columns = ceil(sqrt(slices)) x the tile). Set by hand: ImageType ORIGINAL\\PRIMARY\\DIFFUSION\\
    NONE\\ND\\MOSAIC (``image_type``; the default selection rules skip a diffusion mosaic, and edgeseg refuses
    one they keep: :func:`neutral_mosaic`), the private creator (0019,0010) "SIEMENS MR HEADER" and its
    NumberOfImagesInMosaic (0019,100A, US) = ``slices``, and the same SeriesInstanceUID for every volume."""
    from pydicom.uid import generate_uid

    grid = int(np.ceil(np.sqrt(slices)))
    cols, rows = tile
    series_uid, study_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    out: list[Path] = []
    for v in range(volumes):
        big = np.random.default_rng(seed + v).integers(0, 1000, size=(cols * grid, rows * grid, 1)).astype(np.int16)
        (path,) = write_dicom_series((big, np.diag([2.0, 2.0, 4.0, 1.0])), folder, description,
                                     series_uid=series_uid, study_uid=study_uid, frame_of_reference_uid=for_uid,
                                     image_type=tuple(image_type))
        ds = pydicom.dcmread(path)
        block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        block.add_new(0x0A, "US", slices)
        ds.InstanceNumber = v + 1
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def neutral_mosaic(folder: Path, volumes: int = 2, **kwargs: Any) -> list[Path]:
    """A Siemens EPI mosaic the default selection rules do not skip (ImageType ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC,
    SeriesDescription "ep2d_se_tra"): edgeseg refuses it as a mosaic, a *refused* series."""
    return siemens_mosaic(folder, volumes, description="ep2d_se_tra",
                          image_type=("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"), **kwargs)


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


#: echo times of the two-echo cases, ms (in/opposed phase at 3 T)
ECHO_TIMES = (2.46, 3.69)


def multi_echo_series(folder: Path, n: int = 6, *, seed: int = 0, description: str = "t1_fl2d_dixon",
                      image_types: Sequence[Sequence[str]] | None = None) -> tuple[list[Path], list[np.ndarray]]:
    """Two echoes at the same slice positions in ONE classic series, as Siemens writes a dual-echo (Dixon-like
    in/opposed phase) acquisition: every file has the same SeriesInstanceUID, StudyInstanceUID and
    FrameOfReferenceUID; set by hand per echo e (1, 2): EchoNumbers = e, EchoTime = :data:`ECHO_TIMES`[e - 1],
    InstanceNumber continuing over both echoes, ImagesInAcquisition = 2n, and ImageType = ``image_types[e - 1]``
    when given (e.g. ...\\DIXON\\OPP_PHASE / ...\\IN_PHASE), else ORIGINAL\\PRIMARY\\M\\NONE for both. The second
    echo's values are the first's x 0.6 (T2* decay). Returns (files of echo 1 then echo 2, [array of echo 1,
    array of echo 2]) with the arrays (I, J, K) as written."""
    from pydicom.uid import generate_uid

    first, affine = small_volume(n, seed=seed)
    arrays = [first, np.round(first * 0.6).astype(np.int16)]
    uids = {"series_uid": generate_uid(), "study_uid": generate_uid(), "frame_of_reference_uid": generate_uid()}
    files: list[Path] = []
    for e, array in enumerate(arrays, start=1):
        image_type = tuple(image_types[e - 1]) if image_types else ("ORIGINAL", "PRIMARY", "M", "NONE")
        written = write_dicom_series((array, affine), folder, description, image_type=image_type, **uids)
        for k, path in enumerate(written):
            ds = pydicom.dcmread(path)
            ds.EchoNumbers = e
            ds.EchoTime = ECHO_TIMES[e - 1]
            ds.InstanceNumber = (e - 1) * n + k + 1
            ds.ImagesInAcquisition = 2 * n
            ds.save_as(path, enforce_file_format=True)
        files.extend(written)
    return files, arrays


def multi_echo_enhanced(path: Path, n: int = 5, *, seed: int = 0) -> tuple[Path, list[np.ndarray]]:
    """Two echoes at the same positions in ONE Enhanced MR Image Storage file (Siemens XA / Philips style), frames
    ordered echo 1 slices then echo 2 slices. Written by the demo writer as a 2n-slice volume, then set by hand
    per frame: PlanePositionSequence of frame n + k = that of frame k (same position), MREchoSequence with
    EffectiveEchoTime = :data:`ECHO_TIMES`[e - 1], FrameContentSequence TemporalPositionIndex absent,
    InStackPositionNumber = k + 1 for both echoes. Returns (path, [array of echo 1, array of echo 2])."""
    from pydicom.dataset import Dataset

    from edgeseg.demo.dicom_series import write_enhanced_mr

    first, affine = small_volume(n, seed=seed)
    arrays = [first, np.round(first * 0.6).astype(np.int16)]
    write_enhanced_mr((np.concatenate(arrays, axis=2), affine), path, "t1_vibe_dixon_tra", frame_order="ordered")
    ds = pydicom.dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    for f, item in enumerate(frames):
        e, k = divmod(f, n)
        if e:
            item.PlanePositionSequence[0].ImagePositionPatient = list(
                frames[k].PlanePositionSequence[0].ImagePositionPatient)
        item.FrameContentSequence[0].InStackPositionNumber = k + 1
        item.FrameContentSequence[0].DimensionIndexValues = [1, k + 1]
        echo = Dataset()
        echo.EffectiveEchoTime = ECHO_TIMES[e]
        item.MREchoSequence = [echo]
    ds.save_as(path, enforce_file_format=True)
    return Path(path), arrays
