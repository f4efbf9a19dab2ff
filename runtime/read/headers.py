"""What a file is and which series it belongs to, from headers only: the read stage's one header-level API.

:func:`~edgeseg.runtime.read.discover_series` (a folder at once) and the watcher's completion tracker (file by file,
as they arrive) both use it, so they classify files, group instances into series, count the instances a series
announces and measure its volume the same way. Nothing here decodes pixel data or modifies a file.

* :func:`file_kind`: "nifti", "parrec" (a PAR header), "rec" (a PAR's data file) or "dicom" (every other file is a
  DICOM candidate). PAR and REC files pair by name: :func:`~edgeseg.runtime.read._parrec.rec_files`,
  :func:`~edgeseg.runtime.read._parrec.par_candidates`.
* :func:`read_dicom_header`: a DICOM file's header, or None; :func:`instance_from_header`: the :class:`Instance`
  of a header (the series it belongs to (:func:`series_identity`), whether the reader stacks it
  (:func:`non_image_reason`), its plane geometry and the counts it announces).
* :func:`series_identity`: which series an instance belongs to: its SeriesInstanceUID, or for an export without
  one (empty or missing, as some de-identification tools leave SOP/Series/Study Instance UIDs) an identity derived
  from FrameOfReferenceUID, StudyInstanceUID, SeriesNumber, SeriesDescription, Modality, orientation and matrix
  (:func:`~edgeseg.runtime.naming.derived_series_id`). Such series are also grouped by folder (the series key
  holds the folder).
* :func:`non_image_reason`: why a file is not stacked, in words a PACS administrator can act on; the images it
  refuses (:data:`REFUSED`: a Siemens mosaic, a colour image, no patient geometry, an enhanced image without
  per-frame geometry) count as failed series, other objects (reports, DICOMDIR) hold nothing to segment;
  :class:`SkippedFiles` collects them per reason, with counts and an example file.
* :func:`expected_instances`: how many instances a series' headers announce; :func:`dicom_geometry`: the
  :class:`~edgeseg.runtime.read.geometry.SeriesGeometry` of a DICOM series from its instances;
  :func:`check_image_file`: whether a NIfTI or PAR/REC file opens and holds its data, and its geometry.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from edgeseg.runtime.naming import derived_series_id
from edgeseg.runtime.read._nifti import is_nifti_path
from edgeseg.runtime.read.geometry import SeriesGeometry, world_axes
from edgeseg.runtime.read.limits import quick_gzip_problem, read_nifti_header
from edgeseg.runtime.read.series_ref import DICOM, NIFTI, PARREC

log = logging.getLogger(__name__)

#: what a file is: an image file of a series (NIfTI, a PAR header), a PAR's data file, or a DICOM candidate
FileKind = Literal["dicom", "nifti", "parrec", "rec"]
#: a PAR's data file (.REC): belongs to the series of its PAR
REC: Final = "rec"

#: Media Storage Directory Storage (DICOMDIR)
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
#: SOP classes that carry no image volume for us, by UID prefix -> what they are
_NON_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.": "structured report",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.66": "raw data / segmentation / registration",
    "1.2.840.10008.5.1.4.1.1.481.": "radiotherapy object",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR spectroscopy",
    "1.2.840.10008.5.1.4.1.1.9.": "waveform",
}
_NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "RWV", "DOC", "PLAN",
                         "FID", "RAW"}


def file_kind(path: Path) -> FileKind:
    """``nifti`` (.nii, .nii.gz), ``parrec`` (.par), ``rec`` (a PAR's data, .rec) or ``dicom`` (anything else is a
    DICOM candidate), by name in any case."""
    if is_nifti_path(path):
        return NIFTI
    suffix = path.suffix.lower()
    if suffix == ".par":
        return PARREC
    if suffix == ".rec":
        return REC
    return DICOM


# ------------------------------------------------------------------------------------------------- DICOM headers


def read_dicom_header(path: str | os.PathLike[str]) -> Any | None:
    """Read a DICOM file's header (``stop_before_pixels``), or return None if it is not a readable DICOM file.

    Files without the DICOM preamble/"DICM" prefix (``force=False``) are non-DICOM: None, logged at debug level.
    Unreadable or truncated DICOM files also give None (logged at warning level). Never modifies the file.
    Returns a ``pydicom.Dataset`` (file meta included) otherwise.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(os.fspath(path), stop_before_pixels=True, force=False)
    except InvalidDicomError:
        log.debug("not a DICOM file, skipped: %s", path)
    except IsADirectoryError:
        log.debug("a folder, not a DICOM file: %s", path)
    except Exception as err:  # truncated, still being copied, unreadable: pydicom raises many types
        log.warning("could not read DICOM header of %s (%s: %s); skipped", path, type(err).__name__, err)
    return None


def _str(ds: Any, keyword: str, default: str = "") -> str:
    value = ds.get(keyword, default)
    return default if value is None else str(value).strip()


def _int_or_none(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _is_localizer(image_type: Any) -> bool:
    if image_type is None:
        return False
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return any(str(v).strip().upper() == "LOCALIZER" for v in values)


def _is_multiframe(ds: Any) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or (_int_or_none(ds, "NumberOfFrames") or 1) > 1


# ------------------------------------------------------------------------------------- why a file is not stacked

#: a Siemens mosaic: one file holds a whole EPI/DWI volume, its slices tiled into one image
MOSAIC: Final = ("Siemens mosaic (EPI/DWI) is not supported: each file holds a whole volume, its slices tiled into "
                 "one image. Export the series from the scanner without mosaic, or convert it to NIfTI with dcm2niix "
                 "and segment that file")
#: a colour image (SamplesPerPixel > 1)
COLOUR: Final = ("colour (RGB) image, not greyscale MR data: a screen capture, colour map or fused display. Send "
                 "the original greyscale series from the scanner")
#: an enhanced multi-frame image without per-frame functional groups
NO_FRAME_GEOMETRY: Final = ("enhanced (multi-frame) image without per-frame geometry (no functional groups), so its "
                            "frames cannot be placed in space. Export the series as classic single-frame images, or "
                            "as enhanced MR with its functional groups")
#: every slice of a series is a localizer
LOCALIZER_ONLY: Final = "only localizer (scout) images, which are not a 3-D volume: nothing to segment"
#: a file discovery cannot read as DICOM (and that is not NIfTI or PAR/REC either)
NOT_DICOM: Final = "not a DICOM, NIfTI or PAR/REC file (or an unreadable DICOM file)"


def no_geometry(keyword: str) -> str:
    """The reason for an image without patient geometry (``keyword`` is the attribute missing)."""
    return (f"image without patient geometry ({keyword} missing), e.g. a secondary capture or screenshot, which "
            "cannot be placed in space. Send the original images from the scanner")


#: reasons that refuse an *image* (one a user may have meant to segment), as opposed to objects that hold no image
#: (reports, presentation states, DICOMDIR): a refused image series counts as a failed series
REFUSED: Final = frozenset({MOSAIC, COLOUR, NO_FRAME_GEOMETRY} | {
    no_geometry(k) for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")})


def _is_mosaic(ds: Any) -> bool:
    """ImageType holds MOSAIC, or the Siemens private NumberOfImagesInMosaic (0019,xx0A of "SIEMENS MR HEADER")
    is there."""
    image_type = ds.get("ImageType")
    if image_type is not None:
        values = [image_type] if isinstance(image_type, str) else list(image_type)
        if any(str(v).strip().upper() == "MOSAIC" for v in values):
            return True
    try:
        return 0x0A in ds.private_block(0x0019, "SIEMENS MR HEADER")
    except (KeyError, ValueError):
        return False


def non_image_reason(ds: Any) -> str | None:
    """Why ``ds`` is not an image instance we can stack (None if it is one), in words a PACS administrator can act
    on: an object that is no image (report, presentation state, DICOMDIR, ...), or one of the refused images of
    :data:`REFUSED` (:data:`MOSAIC`, :data:`COLOUR`, :data:`NO_FRAME_GEOMETRY`, :func:`no_geometry`). Works on
    headers only."""
    media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    sop_class = _str(ds, "SOPClassUID") or media_class
    if _DICOMDIR_CLASS in (sop_class, media_class) or "DirectoryRecordSequence" in ds:
        return "DICOMDIR"
    for prefix, what in _NON_IMAGE_CLASSES.items():
        if sop_class.startswith(prefix):
            return what
    modality = _str(ds, "Modality").upper()
    if modality in _NON_IMAGE_MODALITIES:
        return f"non-image object (Modality {modality})"
    if "Rows" not in ds or "Columns" not in ds:
        return "no image pixel data (no Rows/Columns)"
    if _int_or_none(ds, "SamplesPerPixel") not in (None, 1):
        return COLOUR
    if _is_mosaic(ds):
        return MOSAIC
    if _is_multiframe(ds):
        if "PerFrameFunctionalGroupsSequence" not in ds:
            return NO_FRAME_GEOMETRY
        return None
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in ds:
            return no_geometry(keyword)
    return None


@dataclass
class SkippedFiles:
    """What discovery did not turn into a series: the files per reason (in the order found), so that a folder without
    series, or a series refused, can say why in words a PACS administrator can act on (counts and an example per
    reason). Reasons in :data:`REFUSED` are images edgeseg refuses; the others hold nothing to segment."""

    files: dict[str, list[Path]] = field(default_factory=dict)

    def add(self, reason: str, path: Path) -> None:
        self.files.setdefault(reason, []).append(Path(path))

    def __bool__(self) -> bool:
        return bool(self.files)

    @property
    def refused(self) -> dict[str, list[Path]]:
        """The refused images (:data:`REFUSED`), per reason."""
        return {reason: paths for reason, paths in self.files.items() if reason in REFUSED}

    def summary(self, reasons: dict[str, list[Path]] | None = None) -> str:
        """``N file(s), e.g. <file>: <reason>; ...`` for ``reasons`` (default: every one), most files first."""
        items = sorted((self.files if reasons is None else reasons).items(), key=lambda kv: -len(kv[1]))
        return "; ".join(f"{len(paths)} file(s), e.g. {paths[0]}: {reason}" for reason, paths in items)


def _float_or_none(ds: Any, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _floats_or_none(ds: Any, keyword: str, n: int) -> tuple[float, ...] | None:
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        out = tuple(float(x) for x in value)
        return out if len(out) == n else None
    except (TypeError, ValueError):
        return None


def _orientation_key(ds: Any) -> str:
    """ImageOrientationPatient (top level, else the shared functional groups) rounded to 0.01: the same for every
    slice of a series despite rounding noise (GE), different for another plane."""
    value = ds.get("ImageOrientationPatient")
    if value is None:
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            orientation = _fg_first(shared[0], "PlaneOrientationSequence")
            value = orientation.get("ImageOrientationPatient") if orientation is not None else None
    try:
        return ",".join(f"{round(float(v), 2) + 0.0:.2f}" for v in value) if value is not None else ""
    except (TypeError, ValueError):
        return ""


def _fg_first(group: Any, sequence: str) -> Any | None:
    items = group.get(sequence) if group is not None else None
    return items[0] if items else None


def series_identity(ds: Any) -> str:
    """The series an instance belongs to: its SeriesInstanceUID, or, when that is empty or missing in an image
    header, an identity derived from the values that group such instances
    (:func:`~edgeseg.runtime.naming.derived_series_id`: ``nouid-<hex>``): StudyInstanceUID, FrameOfReferenceUID,
    SeriesNumber, SeriesDescription, Modality, orientation (to 0.01) and matrix (Rows x Columns). Grouping such
    series by folder is the caller's part (the series key holds the folder).

    Raises ValueError for a header with neither a SeriesInstanceUID nor Rows (elements are stored in tag order, so
    a header cut short before (0020,000E) has no Rows (0028,0010) either: a truncated file, or no image)."""
    uid = _str(ds, "SeriesInstanceUID")
    if uid:
        return uid
    if "Rows" not in ds:
        raise ValueError("DICOM object without SeriesInstanceUID and without image rows (truncated, or not an "
                         "image object)")
    return derived_series_id(_str(ds, "StudyInstanceUID"), _str(ds, "FrameOfReferenceUID"),
                             _int_or_none(ds, "SeriesNumber"), _str(ds, "SeriesDescription"), _str(ds, "Modality"),
                             _orientation_key(ds), _int_or_none(ds, "Rows"), _int_or_none(ds, "Columns"))


@dataclass(frozen=True)
class Instance:
    """What one DICOM header says about its series: grouping, whether the reader stacks it, plane geometry, and the
    counts it announces. Positions and orientations are DICOM's (LPS, mm).

    ``series_uid`` is the SeriesInstanceUID as the header has it ("" when empty or missing); ``series_id`` the
    series it belongs to (:func:`series_identity`: the UID, or ``nouid-<hex>`` derived from the headers)."""

    series_uid: str
    series_id: str
    sop_uid: str
    sop_class: str
    description: str
    modality: str
    series_number: int | None
    #: why the reader would not stack this instance (None: an image it stacks)
    non_image: str | None
    is_localizer: bool
    rows: int | None
    columns: int | None
    frames: int | None
    pixel_spacing: tuple[float, float] | None
    slice_spacing: float | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    images_in_acquisition: int | None
    temporal_positions: int | None
    concatenation_total: int | None

    @property
    def is_image(self) -> bool:
        """An instance the reader stacks (localizers included; they are dropped while reading)."""
        return self.non_image is None


def instance_from_header(ds: Any) -> Instance:
    """The :class:`Instance` of a header from :func:`read_dicom_header` (an image without SeriesInstanceUID belongs
    to the series :func:`series_identity` derives for it); raises ValueError for a header that has neither a
    SeriesInstanceUID nor image rows."""
    spacing = _floats_or_none(ds, "PixelSpacing", 2)
    position = _floats_or_none(ds, "ImagePositionPatient", 3)
    return Instance(
        series_uid=_str(ds, "SeriesInstanceUID"),
        series_id=series_identity(ds),
        sop_uid=_str(ds, "SOPInstanceUID"),
        sop_class=_str(ds, "SOPClassUID"),
        description=_str(ds, "SeriesDescription"),
        modality=_str(ds, "Modality"),
        series_number=_int_or_none(ds, "SeriesNumber"),
        non_image=non_image_reason(ds),
        is_localizer=_is_localizer(ds.get("ImageType")),
        rows=_int_or_none(ds, "Rows"),
        columns=_int_or_none(ds, "Columns"),
        frames=_int_or_none(ds, "NumberOfFrames"),
        pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
        slice_spacing=_float_or_none(ds, "SpacingBetweenSlices") or _float_or_none(ds, "SliceThickness"),
        position=(position[0], position[1], position[2]) if position else None,
        orientation=_floats_or_none(ds, "ImageOrientationPatient", 6),
        images_in_acquisition=_int_or_none(ds, "ImagesInAcquisition"),
        temporal_positions=_int_or_none(ds, "NumberOfTemporalPositions"),
        concatenation_total=_int_or_none(ds, "InConcatenationTotalNumber"),
    )


# ------------------------------------------------------------------------------------------------------ series


def expected_instances(instances: list[Instance]) -> int | None:
    """How many image instances the headers announce, or None when they do not say.

    Enhanced multi-frame: all frames are in one file (or InConcatenationTotalNumber files). Otherwise
    ImagesInAcquisition (as Orthanc), else NumberOfTemporalPositions x distinct slice positions.
    """
    images = [i for i in instances if i.is_image]
    if not images:
        return None
    if any((i.frames or 1) > 1 for i in images):
        totals = [i.concatenation_total for i in images if i.concatenation_total]
        return max(totals) if totals else None
    announced = [i.images_in_acquisition for i in images if i.images_in_acquisition]
    if announced:
        return max(announced)
    ntp = max((i.temporal_positions or 0) for i in images)
    if ntp > 1:
        positions = {tuple(round(c, 2) for c in i.position) for i in images if i.position}
        if positions:
            return ntp * len(positions)
    return None


def dicom_geometry(instances: list[Instance]) -> SeriesGeometry | None:
    """Shape (Columns, Rows, slices) and spacing of a DICOM series from its headers; None if they do not say."""
    images = [i for i in instances if i.is_image and i.rows and i.columns]
    if not images:
        return None
    first = images[0]
    columns, rows = int(first.columns or 0), int(first.rows or 0)
    ps = first.pixel_spacing or (1.0, 1.0)
    frames = max((i.frames or 1) for i in images)
    if frames > 1:  # enhanced: geometry per frame is in functional groups; take the count and nominal spacing
        return SeriesGeometry((columns, rows, frames * len(images)), (ps[1], ps[0], first.slice_spacing or 1.0))
    dz = first.slice_spacing or 1.0
    axes = (0, 1, 2)
    n = len(images)
    positions = [i.position for i in images if i.position]
    if first.orientation and len(positions) == len(images):
        row = np.array(first.orientation[:3])
        col = np.array(first.orientation[3:])
        normal = np.cross(row, col)
        axes = world_axes([row, col, normal])
        along = sorted({round(float(np.dot(normal, p)), 3) for p in positions})
        n = len(along)
        if n > 1:
            dz = float(np.median(np.diff(along))) or dz
    return SeriesGeometry((columns, rows, int(n)), (float(ps[1]), float(ps[0]), float(dz)), axes)


def check_image_file(path: Path, kind: str) -> tuple[str | None, SeriesGeometry | None]:
    """(problem or None, geometry) for a NIfTI (``kind`` "nifti") or PAR (``kind`` "parrec") file: it must open as
    a 3-D image and hold all its data. Bounded work whatever the file holds: for NIfTI the header only, and the
    gzip stream only when it promises little (:func:`~edgeseg.runtime.read.limits.quick_gzip_problem`); the
    reader checks the limits and larger streams."""
    try:
        import nibabel as nib

        img: Any = read_nifti_header(path) if kind == NIFTI else nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) < 3:
            return f"{path.name} is a {len(shape)}-D image; a 3-D volume is needed", None
        if kind == NIFTI and path.name.lower().endswith(".gz"):
            problem = quick_gzip_problem(path, img)
            if problem:
                return f"{path.name} does not open as NIfTI ({problem})", None
        elif kind == NIFTI:
            need = int(img.header.get_data_offset()) + int(np.prod(shape)) * img.get_data_dtype().itemsize
            if os.path.getsize(path) < need:
                return f"{path.name} is shorter than its header says ({os.path.getsize(path)} < {need} bytes)", None
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        affine = np.asarray(img.affine)
        geom = SeriesGeometry((shape[0], shape[1], shape[2]), (zooms[0], zooms[1], zooms[2]),
                              world_axes([affine[:3, a] for a in range(3)]))
        return None, geom
    except Exception as err:  # noqa: BLE001 - any failure to open means "does not open"
        what = "NIfTI" if kind == NIFTI else "PAR/REC"
        return f"{path.name} does not open as {what} ({type(err).__name__}: {err})", None
