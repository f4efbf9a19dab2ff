"""Write realistic MR DICOM from a volume, for the demo and the tests.

:func:`write_dicom_series` writes a classic MR series (MR Image Storage, one file per slice, explicit VR little
endian); :func:`write_enhanced_mr` writes one Enhanced MR Image Storage file with every slice as a frame. Both read
back (``edgeseg.runtime.read``) to the same voxel grid in world space.

Geometry: the source is an array indexed (i, j, k) with an affine voxel -> RAS+ mm (nibabel convention). Slice k
is the plane ``array[:, :, k]``; its DICOM pixel matrix is ``array[:, :, k].T`` (Rows = J, Columns = I). With
``L = diag(-1, -1, 1, 1) @ affine`` (RAS -> LPS): ImageOrientationPatient = (L[:3, 0] / |L[:3, 0]|,
L[:3, 1] / |L[:3, 1]|), PixelSpacing = [|L[:3, 1]|, |L[:3, 0]|] (between rows, between columns),
ImagePositionPatient of slice k = L @ (0, 0, k, 1). The i and j axes must be orthogonal (DICOM cannot shear a
plane); the k axis may be oblique to the plane. Sagittal, coronal and oblique stacks are made by passing such an
affine (and the array permuted to match). Values are stored as int16 with RescaleSlope/RescaleIntercept.

File names are random hex strings without extension and InstanceNumber follows the slice order, so a reader that
sorted by file name would fail; readers must sort by position.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from edgeseg import __version__
from edgeseg.typing import StrPath

log = logging.getLogger(__name__)

#: what the writers accept as a source: a Volume-like object (``array`` and ``affine``), a NIfTI path, or
#: an (array, affine) pair
SourceLike = Union[StrPath, Any, tuple[np.ndarray, np.ndarray]]


def _load(source: SourceLike, affine: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(source, tuple):
        array, aff = source
    elif hasattr(source, "array") and hasattr(source, "affine"):
        array, aff = source.array, source.affine
    else:
        import nibabel as nib

        img: Any = nib.load(os.fspath(source))
        array, aff = np.asanyarray(img.dataobj), img.affine
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"need a 3-D array, got shape {array.shape}")
    aff = np.asarray(affine if affine is not None else aff, dtype=np.float64)
    return array, aff


def _ds(value: float) -> Any:
    from pydicom.valuerep import DSfloat

    return DSfloat(float(value), auto_format=True)


def _geometry(affine: np.ndarray, shape: tuple[int, ...]) -> dict[str, Any]:
    from edgeseg.runtime.read import planes_from_affine

    geo = planes_from_affine(affine, shape[2])
    return {
        "iop": [_ds(v) for v in geo["iop"]],
        "pixel_spacing": [_ds(v) for v in geo["pixel_spacing"]],
        "spacing": geo["slice_spacing"],
        "positions": list(geo["positions"]),
        "normal": geo["normal"],
    }


def _rescale(array: np.ndarray, rescale: tuple[float, float] | None) -> tuple[np.ndarray, float, float]:
    """int16 stored values and (slope, intercept) with value = stored * slope + intercept."""
    values = np.asarray(array, dtype=np.float64)
    if rescale is None:
        lo, hi = float(values.min()), float(values.max())
        if np.all(values == np.round(values)) and lo >= -32768 and hi <= 32767:
            slope, intercept = 1.0, 0.0
        else:
            intercept = (hi + lo) / 2.0
            slope = (hi - lo) / 65534.0 if hi > lo else 1.0
    else:
        slope, intercept = float(rescale[0]), float(rescale[1])
    stored = np.round((values - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(f"rescale {slope}, {intercept} does not fit the values in int16")
    return stored.astype(np.int16), slope, intercept


def _common(ds: Any, *, sop_class: str, patient_id: str, study_uid: str, series_uid: str, for_uid: str,
            series_number: int, series_description: str, now: datetime) -> None:
    """Patient, study, series, equipment, frame of reference and SOP common attributes."""
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "EDGESEG^DEMO"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "edgeseg demo study"
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "edgeseg demo"
    ds.ManufacturerModelName = "edgeseg.demo.dicom_series"
    ds.SoftwareVersions = __version__
    ds.DeviceSerialNumber = "0"
    ds.MagneticFieldStrength = 1.5
    ds.BodyPartExamined = "ABDOMEN"
    ds.PatientPosition = "HFS"


def _pixel_module(ds: Any, rows: int, cols: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1


def _save(ds: Any, path: Path, sop_class: str) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.save_as(os.fspath(path), enforce_file_format=True)


def write_dicom_series(
    source: SourceLike,
    out_dir: StrPath,
    series_description: str = "edgeseg demo T1",
    *,
    affine: np.ndarray | None = None,
    delay_s: float = 0.0,
    rescale: tuple[float, float] | None = None,
    patient_id: str = "EDGESEG-DEMO",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "NONE"),
    file_names: str = "random",
) -> list[Path]:
    """Write ``source`` as a classic MR DICOM series, one file per slice, into ``out_dir`` (created if needed).

    ``source``: a NIfTI path, an object with ``array`` and ``affine`` (a :class:`Volume`), or an (array, affine)
    pair; ``affine`` overrides its affine (e.g. a rotated one for an oblique stack). ``rescale``: (slope,
    intercept) to use; None picks slope 1 / intercept 0 for int16-range integers, else a linear map onto int16.
    ``delay_s``: pause after each file (simulates a scanner sending slowly). ``file_names``: "random" (16 hex
    characters, no extension) or "ordered" (``IM0001.dcm``...). Returns the written paths in slice (k) order.
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import MRImageStorage, generate_uid

    array, aff = _load(source, affine)
    geo = _geometry(aff, array.shape)
    stored, slope, intercept = _rescale(array, rescale)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    now = datetime.now()
    n_slices = array.shape[2]
    paths: list[Path] = []
    for k in range(n_slices):
        ds = Dataset()
        sop_uid = generate_uid()
        _common(ds, sop_class=MRImageStorage, patient_id=patient_id, study_uid=study_uid, series_uid=series_uid,
                for_uid=for_uid, series_number=series_number, series_description=series_description, now=now)
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = list(image_type)
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ImagesInAcquisition = n_slices
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 500.0
        ds.EchoTime = 10.0
        ds.EchoTrainLength = 1
        ds.SliceThickness = _ds(geo["spacing"])
        ds.SpacingBetweenSlices = _ds(geo["spacing"])
        ds.ImagePositionPatient = [_ds(v) for v in geo["positions"][k]]
        ds.ImageOrientationPatient = geo["iop"]
        ds.PixelSpacing = geo["pixel_spacing"]
        ds.SliceLocation = _ds(float(np.dot(geo["positions"][k], geo["normal"])))
        _pixel_module(ds, rows=array.shape[1], cols=array.shape[0])
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleType = "US"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        name = secrets.token_hex(8) if file_names == "random" else f"IM{k + 1:04d}.dcm"
        path = out / name
        _save(ds, path, MRImageStorage)
        paths.append(path)
        if delay_s > 0:
            time.sleep(delay_s)
    log.info("wrote %d-slice MR series %s to %s", n_slices, series_uid, out)
    return paths


def write_enhanced_mr(
    source: SourceLike,
    out_path: StrPath,
    series_description: str = "edgeseg demo enhanced",
    *,
    affine: np.ndarray | None = None,
    rescale: tuple[float, float] | None = None,
    frame_order: str = "shuffled",
    seed: int = 0,
    patient_id: str = "EDGESEG-DEMO",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
) -> Path:
    """Write ``source`` as one Enhanced MR Image Storage file (all slices as frames) at ``out_path``.

    Geometry per frame in PerFrameFunctionalGroupsSequence (PlanePositionSequence, FrameContentSequence with
    the in-stack position); orientation, pixel measures, rescale (PixelValueTransformationSequence) and frame type
    in SharedFunctionalGroupsSequence. ``frame_order``: "shuffled" (frames stored in a random order, seeded) or
    "ordered" (frame f = slice k). Other arguments as for :func:`write_dicom_series`. Returns ``out_path``.
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import EnhancedMRImageStorage, generate_uid

    array, aff = _load(source, affine)
    geo = _geometry(aff, array.shape)
    stored, slope, intercept = _rescale(array, rescale)
    n_slices = array.shape[2]
    order = np.arange(n_slices)
    if frame_order == "shuffled":
        order = np.random.default_rng(seed).permutation(n_slices)
    now = datetime.now()
    for_uid = frame_of_reference_uid or generate_uid()
    ds = Dataset()
    _common(ds, sop_class=EnhancedMRImageStorage, patient_id=patient_id, study_uid=study_uid or generate_uid(),
            series_uid=series_uid or generate_uid(), for_uid=for_uid, series_number=series_number,
            series_description=series_description, now=now)
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentQualification = "PRODUCT"
    ds.ImageComments = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionNumber = 1
    ds.NumberOfFrames = n_slices
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = 1.5
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "T1"
    _pixel_module(ds, rows=array.shape[1], cols=array.shape[0])

    dim_uid = generate_uid()
    org = Dataset()
    org.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = [org]
    stack_dim = Dataset()
    stack_dim.DimensionOrganizationUID = dim_uid
    stack_dim.DimensionIndexPointer = 0x00209056  # StackID
    stack_dim.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
    pos_dim = Dataset()
    pos_dim.DimensionOrganizationUID = dim_uid
    pos_dim.DimensionIndexPointer = 0x00209057  # InStackPositionNumber
    pos_dim.FunctionalGroupPointer = 0x00209111
    ds.DimensionIndexSequence = [stack_dim, pos_dim]

    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = geo["iop"]
    shared.PlaneOrientationSequence = [orientation]
    measures = Dataset()
    measures.PixelSpacing = geo["pixel_spacing"]
    measures.SliceThickness = _ds(geo["spacing"])
    measures.SpacingBetweenSlices = _ds(geo["spacing"])
    shared.PixelMeasuresSequence = [measures]
    transform = Dataset()
    transform.RescaleSlope = _ds(slope)
    transform.RescaleIntercept = _ds(intercept)
    transform.RescaleType = "US"
    shared.PixelValueTransformationSequence = [transform]
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    frame_type.PixelPresentation = "MONOCHROME"
    frame_type.VolumetricProperties = "VOLUME"
    frame_type.VolumeBasedCalculationTechnique = "NONE"
    frame_type.ComplexImageComponent = "MAGNITUDE"
    frame_type.AcquisitionContrast = "T1"
    shared.MRImageFrameTypeSequence = [frame_type]
    ds.SharedFunctionalGroupsSequence = [shared]

    per_frame = []
    for k in order:
        item = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = int(k) + 1
        content.DimensionIndexValues = [1, int(k) + 1]
        item.FrameContentSequence = [content]
        position = Dataset()
        position.ImagePositionPatient = [_ds(v) for v in geo["positions"][int(k)]]
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    frames = np.stack([stored[:, :, int(k)].T for k in order])  # (frames, rows, cols)
    ds.PixelData = np.ascontiguousarray(frames).astype("<i2").tobytes()
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(ds, path, EnhancedMRImageStorage)
    log.info("wrote %d-frame enhanced MR image to %s", n_slices, path)
    return path
