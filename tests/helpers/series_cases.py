"""The non-anatomical series of a real MR study, as vendors write them (issue 20: series selection; tests only).

Each writer starts from a classic MR series of the demo writer (:func:`edgeseg.demo.dicom_series.write_dicom_series`)
and edits headers with pydicom; each says which fields it sets. Files are only ever written under the folder given.

* :func:`canon_dti`: a Canon (Toshiba) DTI series: 13 volumes (b = 0 and 12 directions at b = 1000) at the same
  slice positions in ONE classic series, told apart by TemporalPositionIdentifier, with DiffusionBValue (0018,9087)
  and DiffusionGradientOrientation (0018,9089) per image and ImageType ORIGINAL\\PRIMARY\\M\\NONE (no DIFFUSION value:
  the issue's 13 SEGs and 13 SRs).
* :func:`ge_bold`: a GE BOLD run: 10 time points at the same positions, ImageType ORIGINAL\\PRIMARY\\EPI\\NONE,
  SeriesDescription "rsfMRI BOLD", NumberOfTemporalPositions 10.
* :func:`siemens_phase`: the phase series of a Siemens gre_field_mapping (ImageType ORIGINAL\\PRIMARY\\P\\ND).
* :func:`philips_b0_map`: a Philips B0 field map in Hz (ImageType ORIGINAL\\PRIMARY\\B0 MAP\\B0\\UNSPECIFIED).
* :func:`siemens_localizer`: a Siemens localizer whose ImageType does not say so (ORIGINAL\\PRIMARY\\M\\NORM\\DIS2D):
  SeriesDescription "localizer", 3 slices.
* :func:`secondary_capture`: a Secondary Capture Image (SOP class 1.2.840.10008.5.1.4.1.1.7, Modality MR as Siemens
  writes its evaluation pages, ImageType DERIVED\\SECONDARY, no ImagePositionPatient / ImageOrientationPatient /
  PixelSpacing).
* :func:`anatomical`: a plain T1 (ImageType ORIGINAL\\PRIMARY\\M\\NONE, "t1_mprage_sag"), the one series to segment.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import uid

from edgeseg.demo.dicom_series import write_dicom_series

N = 6


def _volume(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    array = np.random.default_rng(seed).integers(0, 1000, size=(12, 10, n)).astype(np.int16)
    return array, np.diag([2.0, 2.0, 2.0, 1.0])


def _volumes(folder: Path, count: int, description: str, image_type: tuple[str, ...], seed: int,
             edit: Any) -> list[Path]:
    """``count`` volumes at the same positions in one series; ``edit(ds, volume)`` sets the per-volume fields."""
    uids = {"series_uid": uid.generate_uid(), "study_uid": uid.generate_uid(),
            "frame_of_reference_uid": uid.generate_uid()}
    files: list[Path] = []
    for v in range(count):
        written = write_dicom_series(_volume(seed + v), folder, description, image_type=image_type, **uids)
        for k, path in enumerate(written):
            ds = pydicom.dcmread(path)
            ds.InstanceNumber = v * N + k + 1
            edit(ds, v)
            ds.save_as(path, enforce_file_format=True)
        files.extend(written)
    return files


def canon_dti(folder: Path, seed: int = 10) -> list[Path]:
    def edit(ds: Any, v: int) -> None:
        ds.Manufacturer = "CANON_MEC"
        ds.TemporalPositionIdentifier = v + 1
        ds.NumberOfTemporalPositions = 13
        ds.add_new((0x0018, 0x9087), "FD", 0.0 if v == 0 else 1000.0)  # DiffusionBValue
        direction = [0.0, 0.0, 0.0] if v == 0 else list(np.round(np.random.default_rng(v).normal(size=3), 3))
        ds.add_new((0x0018, 0x9089), "FD", direction)  # DiffusionGradientOrientation
    return _volumes(folder, 13, "DTI_MPG12 b1000", ("ORIGINAL", "PRIMARY", "M", "NONE"), seed, edit)


def ge_bold(folder: Path, seed: int = 30) -> list[Path]:
    def edit(ds: Any, v: int) -> None:
        ds.Manufacturer = "GE MEDICAL SYSTEMS"
        ds.TemporalPositionIdentifier = v + 1
        ds.NumberOfTemporalPositions = 10
    return _volumes(folder, 10, "rsfMRI BOLD", ("ORIGINAL", "PRIMARY", "EPI", "NONE"), seed, edit)


def _one(folder: Path, description: str, image_type: tuple[str, ...], seed: int, n: int = N,
         **fields: Any) -> list[Path]:
    files = write_dicom_series(_volume(seed, n), folder, description, image_type=image_type)
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in fields.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return files


def siemens_phase(folder: Path, seed: int = 50) -> list[Path]:
    return _one(folder, "gre_field_mapping", ("ORIGINAL", "PRIMARY", "P", "ND"), seed, Manufacturer="SIEMENS",
                ProtocolName="gre_field_mapping")


def philips_b0_map(folder: Path, seed: int = 60) -> list[Path]:
    return _one(folder, "B0map_shim", ("ORIGINAL", "PRIMARY", "B0 MAP", "B0", "UNSPECIFIED"), seed,
                Manufacturer="Philips")


def siemens_localizer(folder: Path, seed: int = 70) -> list[Path]:
    return _one(folder, "localizer", ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"), seed, n=3, Manufacturer="SIEMENS",
                ProtocolName="AAHead_Scout")


def secondary_capture(folder: Path, seed: int = 80) -> list[Path]:
    (path,) = write_dicom_series(_volume(seed, 1), folder, "Evaluation report", image_type=("DERIVED", "SECONDARY"))
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = uid.SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "FrameOfReferenceUID"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.ConversionType = "WSD"
    ds.save_as(path, enforce_file_format=True)
    return [path]


def anatomical(folder: Path, seed: int = 90, n: int = N) -> list[Path]:
    return _one(folder, "t1_mprage_sag", ("ORIGINAL", "PRIMARY", "M", "NONE"), seed, n=n, Manufacturer="SIEMENS")


#: folder name -> (writer, the rule that skips it by default)
NON_ANATOMICAL: dict[str, tuple[Any, str]] = {
    "dti": (canon_dti, "selection.exclude_image_types"),
    "bold": (ge_bold, "selection.exclude_descriptions"),
    "phase": (siemens_phase, "selection.exclude_image_types"),
    "b0map": (philips_b0_map, "selection.exclude_image_types"),
    "localizer": (siemens_localizer, "selection.exclude_descriptions"),
    "sc": (secondary_capture, "selection.secondary_capture"),
}


def study(root: Path) -> dict[str, list[Path]]:
    """One study folder: every series of :data:`NON_ANATOMICAL` and the anatomical T1, each in its own folder."""
    out = {name: writer(root / name) for name, (writer, _) in NON_ANATOMICAL.items()}
    out["t1"] = anatomical(root / "t1")
    return out
