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

import functools
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Iterable, Literal

import numpy as np

from edgeseg.runtime.naming import derived_series_id, stack_label
from edgeseg.runtime.read._nifti import is_nifti_path
from edgeseg.runtime.read.geometry import SeriesGeometry, world_axes
from edgeseg.runtime.read.limits import quick_gzip_problem, read_nifti_header
from edgeseg.runtime.read.series_ref import DICOM, NIFTI, PARREC, SeriesRef, Skipped, Stack, StackKey
from edgeseg.runtime.settings.enums import Echoes, values

log = logging.getLogger(__name__)

#: what a file is: an image file of a series (NIfTI, a PAR header), a PAR's data file, or a DICOM candidate
FileKind = Literal["dicom", "nifti", "parrec", "rec"]
#: a PAR's data file (.REC): belongs to the series of its PAR
REC: Final = "rec"


def _family(member: str, levels: int = 1) -> str:
    """The UID prefix of a family of SOP classes: a named member's UID less its last ``levels`` components."""
    return member.rsplit(".", levels)[0] + "."


@functools.cache
def _non_image_classes() -> dict[str, str]:
    """SOP classes that carry no image volume for us, by UID prefix -> what they are (pydicom's names; built on
    first use, as pydicom is only imported then)."""
    from pydicom import uid

    return {
        _family(uid.BasicTextSRStorage): "structured report",
        _family(uid.GrayscaleSoftcopyPresentationStateStorage): "presentation state",
        uid.RawDataStorage: "raw data / segmentation / registration",  # .66 and its .66.x siblings
        _family(uid.RTImageStorage): "radiotherapy object",
        _family(uid.EncapsulatedPDFStorage): "encapsulated document",
        uid.MRSpectroscopyStorage: "MR spectroscopy",
        _family(uid.TwelveLeadECGWaveformStorage, 2): "waveform",
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


# ---------------------------------------------------------------------------------------- stacks within a series


def fg_item(per_frame: Any, shared: Any, sequence: str) -> Any | None:
    """The first item of functional group ``sequence`` for one frame: its per-frame group, else the shared one."""
    for group in (per_frame, shared):
        if group is not None and sequence in group and len(group[sequence].value) > 0:
            return group[sequence].value[0]
    return None


def frame_type_localizer(per_frame: Any, shared: Any) -> bool:
    """True when the frame's *FrameTypeSequence (MR, CT, ...: per frame, else shared) says LOCALIZER."""
    for group in (per_frame, shared):
        if group is None:
            continue
        for elem in group:
            if elem.keyword.endswith("FrameTypeSequence") and elem.VR == "SQ" and len(elem.value) > 0:
                if _is_localizer(elem.value[0].get("FrameType")):
                    return True
    return False


def _frame_type(per_frame: Any, shared: Any) -> Any | None:
    for group in (per_frame, shared):
        if group is None:
            continue
        for elem in group:
            if elem.keyword.endswith("FrameTypeSequence") and elem.VR == "SQ" and len(elem.value) > 0:
                return elem.value[0].get("FrameType")
    return None


def _text(value: Any) -> str:
    """A header value as stack-key text: multi-valued joined by "\\", numbers without trailing zeros."""
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(_text(v) for v in value)
    if isinstance(value, (int, float)) or type(value).__name__ in ("DSfloat", "IS", "DSdecimal"):
        try:
            return format(round(float(value), 3), "g")
        except (TypeError, ValueError):
            pass
    return str(value).strip().upper()


def _key(echo_number: Any, echo_time: Any, image_type: Any, temporal: Any) -> StackKey:
    return (_text(echo_number), _text(echo_time), _text(image_type), _text(temporal))


def _position_key(value: Any) -> tuple[float, ...] | None:
    try:
        return tuple(round(float(v), 2) + 0.0 for v in value) if value is not None else None
    except (TypeError, ValueError):
        return None


#: one plane of an instance: its stack key and its ImagePositionPatient (to 0.01 mm; None where unknown)
Plane = tuple[StackKey, "tuple[float, ...] | None"]


def frame_planes(ds: Any) -> tuple[Plane, ...]:
    """The non-localizer planes of an instance, headers only: per frame (one for a classic image) its
    :data:`~edgeseg.runtime.read.series_ref.StackKey` and position.

    Classic: (EchoNumbers, EchoTime, ImageType, TemporalPositionIdentifier) of the header. Enhanced multi-frame,
    per frame (per-frame functional group, else shared): EchoNumbers of the header, MR Echo's EffectiveEchoTime,
    FrameType (else the header's ImageType), Frame Content's TemporalPositionIndex. The reader computes the same
    keys for the frames it stacks (:func:`frame_stack_keys`)."""
    if not _is_multiframe(ds):
        if _is_localizer(ds.get("ImageType")):
            return ()
        return ((_key(ds.get("EchoNumbers"), ds.get("EchoTime"), ds.get("ImageType"),
                      ds.get("TemporalPositionIdentifier")), _position_key(ds.get("ImagePositionPatient"))),)
    keys = frame_stack_keys(ds)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    planes: list[Plane] = []
    for key, per_frame in zip(keys, ds.get("PerFrameFunctionalGroupsSequence") or []):
        if key is None:
            continue
        position = fg_item(per_frame, shared, "PlanePositionSequence")
        planes.append((key, _position_key(position.get("ImagePositionPatient") if position is not None else None)))
    return tuple(planes)


def frame_stack_keys(ds: Any) -> list[StackKey | None]:
    """Per frame of an instance (one for a classic image) its stack key, None for a localizer frame; see
    :func:`frame_planes` for the attributes read."""
    if not _is_multiframe(ds):
        if _is_localizer(ds.get("ImageType")):
            return [None]
        return [_key(ds.get("EchoNumbers"), ds.get("EchoTime"), ds.get("ImageType"),
                     ds.get("TemporalPositionIdentifier"))]
    file_localizer = _is_localizer(ds.get("ImageType"))
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    keys: list[StackKey | None] = []
    for per_frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
        if file_localizer or frame_type_localizer(per_frame, shared):
            keys.append(None)
            continue
        echo = fg_item(per_frame, shared, "MREchoSequence")
        content = fg_item(per_frame, shared, "FrameContentSequence")
        frame_type = _frame_type(per_frame, shared)
        keys.append(_key(ds.get("EchoNumbers"), echo.get("EffectiveEchoTime") if echo is not None else None,
                         frame_type if frame_type is not None else ds.get("ImageType"),
                         content.get("TemporalPositionIndex") if content is not None else None))
    return keys


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
    from pydicom.uid import MediaStorageDirectoryStorage  # DICOMDIR

    media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    sop_class = _str(ds, "SOPClassUID") or media_class
    if MediaStorageDirectoryStorage in (sop_class, media_class) or "DirectoryRecordSequence" in ds:
        return "DICOMDIR"
    for prefix, what in _non_image_classes().items():
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
    #: whole series (or stacks) skipped by a selection rule (:mod:`edgeseg.runtime.read.selection`)
    by_rule: list[Skipped] = field(default_factory=list)

    def add(self, reason: str, path: Path) -> None:
        self.files.setdefault(reason, []).append(Path(path))

    def __bool__(self) -> bool:
        return bool(self.files) or bool(self.by_rule)

    @property
    def refused(self) -> dict[str, list[Path]]:
        """The refused images (:data:`REFUSED`), per reason."""
        return {reason: paths for reason, paths in self.files.items() if reason in REFUSED}

    def summary(self, reasons: dict[str, list[Path]] | None = None) -> str:
        """``N file(s), e.g. <file>: <reason>; ...`` for ``reasons`` (default: every one), most files first."""
        items = sorted((self.files if reasons is None else reasons).items(), key=lambda kv: -len(kv[1]))
        parts = [f"{len(paths)} file(s), e.g. {paths[0]}: {reason}" for reason, paths in items]
        if reasons is None:
            parts += [f"series {s.description or s.series} skipped by rule {s.rule} ({s.reason})" for s in self.by_rule]
        return "; ".join(parts)


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
    #: the instance's non-localizer planes (:func:`frame_planes`): what tells the stacks of a series apart
    planes: tuple[Plane, ...] = ()
    #: ImageType values (upper case), ProtocolName, and whether the headers carry a diffusion b-value > 0: what the
    #: selection rules read (:mod:`edgeseg.runtime.read.selection`)
    image_type: tuple[str, ...] = ()
    protocol: str = ""
    diffusion: bool = False

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
        planes=_planes_or_empty(ds),
        image_type=_image_type_values(ds.get("ImageType")),
        protocol=_str(ds, "ProtocolName"),
        diffusion=_has_b_value(ds),
    )


def _image_type_values(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip().upper() for v in values if str(v).strip())


def _b_value(item: Any) -> float:
    try:
        return float(item.get("DiffusionBValue") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _has_b_value(ds: Any) -> bool:
    """A diffusion b-value > 0 in the header (DiffusionBValue, classic) or in an MR Diffusion functional group
    (enhanced; shared or the first frames)."""
    if _b_value(ds) > 0:
        return True
    groups = list(ds.get("SharedFunctionalGroupsSequence") or []) + list(
        (ds.get("PerFrameFunctionalGroupsSequence") or [])[:64])
    try:
        return any(_b_value(item) > 0 for group in groups for item in (group.get("MRDiffusionSequence") or []))
    except (AttributeError, TypeError):
        return False


def _planes_or_empty(ds: Any) -> tuple[Plane, ...]:
    try:
        return frame_planes(ds) if non_image_reason(ds) is None else ()
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):  # unusable functional groups
        return ()


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


#: ``echoes``: every 3-D stack of a series is a series of its own, or only the first (lowest echo / time point)
ECHOES: Final = values(Echoes)


def _number(text: str) -> float:
    try:
        return float(text.split("\\")[0])
    except ValueError:
        return float("inf")


def _stack_order(key: StackKey) -> tuple[float, float, float, str]:
    echo_number, echo_time, image_type, temporal = key
    return (_number(echo_number), _number(echo_time), _number(temporal), image_type)


def _labels(keys: list[StackKey]) -> list[tuple[str, str]]:
    """(label, description) per key (in stack order), from what varies between the keys: ``echo<n>`` (EchoNumbers,
    else the rank of EchoTime), the ImageType values not common to all, ``t<n>`` (temporal position)."""
    varies = [len({k[i] for k in keys}) > 1 for i in range(4)]
    common = set.intersection(*(set(k[2].split("\\")) for k in keys))
    times = sorted({k[1] for k in keys}, key=_number)
    out: list[tuple[str, str]] = []
    for i, (echo_number, echo_time, image_type, temporal) in enumerate(keys):
        parts: list[str] = []
        words: list[str] = []
        if varies[0]:
            parts.append("echo" + echo_number.split("\\")[0])
        elif varies[1]:
            parts.append(f"echo{times.index(echo_time) + 1}")
        if varies[0] or varies[1]:
            words.append(", ".join(w for w in (f"EchoNumbers {echo_number}" if echo_number else "",
                                               f"EchoTime {echo_time} ms" if echo_time else "") if w))
        if varies[2]:
            own = [v for v in image_type.split("\\") if v not in common]
            parts.append("_".join(own) or "image")
            words.append(f"ImageType {image_type or '-'}")
        if varies[3]:
            parts.append(f"t{temporal}")
            words.append(f"temporal position {temporal or '-'}")
        out.append((stack_label("_".join(parts) or f"stack{i + 1}"),
                    f"stack {i + 1} of {len(keys)}: " + "; ".join(words)))
    if len({label for label, _ in out}) < len(out):  # sanitizing merged two labels: number them instead
        out = [(f"stack{i + 1}", description) for i, (_, description) in enumerate(out)]
    return out


def split_series(ref: SeriesRef, members: Iterable[tuple[Path, Instance]], echoes: str = "all") -> list[SeriesRef]:
    """The 3-D stacks of one DICOM series as refs of their own: the one series API that ``discover_series`` and the
    watcher's completion tracker both use.

    A series whose non-localizer images carry more than one stack key (:func:`frame_planes`: EchoNumbers,
    EchoTime, ImageType, temporal position; per frame for enhanced images) *at the same slice positions* (several
    echoes, Dixon in/opposed phase, time points) holds several stacks: each becomes a ref with ``stack`` set
    (:class:`~edgeseg.runtime.read.series_ref.Stack`), ``files`` its own files, ``geometry`` its own size, and a name
    and key that say which stack it is (``..._echo2``, ``...#echo2``). A series with one key, or whose keys never
    share a position (one volume whose headers vary from slice to slice), stays ``[ref]``. ``echoes``: "all" (every
    stack) or "first" (the first in order of echo number, echo time, time point, image type).
    """
    if echoes not in ECHOES:
        raise ValueError(f"echoes must be one of {', '.join(ECHOES)}, not {echoes!r}")
    members = list(members)
    positions: dict[StackKey, set[Any]] = {}
    files: dict[StackKey, dict[Path, None]] = {}  # in order of arrival (a dict: a series of n files is O(n))
    planes: dict[StackKey, int] = {}
    instances: dict[StackKey, list[Instance]] = {}
    for path, instance in members:
        if not instance.is_image:
            continue
        for key, position in instance.planes:
            positions.setdefault(key, set()).add(position)
            planes[key] = planes.get(key, 0) + 1
            if path not in files.setdefault(key, {}):
                files[key][path] = None
                instances.setdefault(key, []).append(instance)
    keys = sorted(positions, key=_stack_order)
    overlap = any(positions[a] & positions[b] - {None} for i, a in enumerate(keys) for b in keys[i + 1:])
    if len(keys) < 2 or not overlap:
        return [ref]
    refs = []
    for index, (key, (label, description)) in enumerate(zip(keys, _labels(keys))):
        geometry = dicom_geometry(instances[key])
        if geometry is not None and any((i.frames or 1) > 1 for i in instances[key]):
            geometry = SeriesGeometry((geometry.shape[0], geometry.shape[1], planes[key]), geometry.spacing,
                                      geometry.world_axes)
        refs.append(replace(ref, files=tuple(sorted(files[key])), stack=Stack(index, len(keys), label, key,
                                                                               description),
                            expected_instances=None, geometry=geometry))
    return refs[:1] if echoes == "first" else refs


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
