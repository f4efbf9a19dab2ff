"""``seg.dcm``: a DICOM Segmentation (highdicom) referencing the source images, for PACS and viewers.

Type (``segmentation_type``; for results ``OutputOptions.seg_type``, config ``outputs.seg_type``, ``edgeseg segment
--seg-type``): "LABELMAP" (one frame per source plane holding segment numbers; DICOM 2024, highdicom >= 0.24) or
"BINARY" (one 1-bit frame per segment and plane it occurs in: the most widely supported type, but thousands of
frames for 50 structures). ``benchmarks/dicomseg_types.py`` measures both; the README has the figures and the
reason for the default.

Only labels present in the mask become segments. They are renumbered 1..n in ascending label order (DICOM needs
consecutive segment numbers); each segment's SegmentLabel is the label name, and the mapping segment number ->
(label value, name) is returned for the run manifest. What a segment *is*: SNOMED CT segmented property category,
type and laterality modifier from :mod:`edgeseg.runtime.write.structure_codes` (a generic "Anatomical Structure"
for a name it does not know); its RecommendedDisplayCIELabValue is the preview's colour of its label value
(:func:`edgeseg.runtime.write.preview.label_color`). Algorithm: AUTOMATIC, name "edgeseg", family DCM "Artificial
Intelligence". ContributingEquipmentSequence names edgeseg (Processing Equipment) and the model bundle.

Geometry: ``labelmap`` is indexed (i, j, k) like :class:`Volume`, where plane k is ``pixel_array.T`` of source
plane k; so source plane k's segmentation frame is ``labelmap[:, :, k].T`` with shape (Rows, Columns).
highdicom takes the plane geometry from the sources unless it is given explicitly (:func:`_plane_geometry`):

* a classic series whose instances share one ImageOrientationPatient: frames in k order with the source instances
  in k order (``Volume.dicom_files``), geometry copied by highdicom;
* an enhanced multi-frame source: pixel measures and plane orientation are taken from the Per-frame or the Shared
  Functional Groups, whichever the file has (Siemens XA and Philips keep them per frame), and passed explicitly;
  when every frame is in the volume the frames are put back in the file's frame order (``Volume.dicom.frames``);
* orientation noise (GE writes ImageOrientationPatient with ~1e-7 differences between slices; the reader stacked
  them as one orientation within its tolerance): one orientation for the stack -- the reader's, from the volume's
  affine -- and explicit plane positions (each stacked plane's own ImagePositionPatient), so highdicom still links
  each frame to its source plane;
* a partial stack (a frame of an enhanced image not stacked, e.g. a localizer): explicit plane positions;
* sources stored with reversed rows under an upright header (GE ``epi_pepolar``, ``Volume.dicom.rows_reversed``):
  the reader reversed them back (the mask and NIfTI are upright on the header's grid), and each SEG frame's rows
  are reversed again, into its source instance's stored order, with that instance's own position and orientation:
  a viewer overlays the SEG on the pixels as stored, as it shows them.

highdicom 0.28 reads the orientation and pixel measures of a multi-frame source from its Shared Functional Groups
and demands one identical ImageOrientationPatient from classic sources even when they are given explicitly, so
the in-memory copies of the sources (read here without pixel data; the files are never written) carry the stack's
one orientation and, for a multi-frame source, its pixel measures and orientation as shared groups.

UIDs (:func:`result_uids`): the SEG's SeriesInstanceUID and SOPInstanceUID are derived, not random: a hash of the
source series (SeriesInstanceUID, the sorted SOPInstanceUIDs of the instances stacked, the stack label of a split
series), the model (:func:`model_identity`: the bundle.json sha256, the variant, each part's precision as run), the
SEG type and the role. A re-run of the same input with the same bundle writes the same UIDs, so a PACS that receives
a re-sent or re-computed result replaces or deduplicates it instead of filing a second copy. The edgeseg version is
not part of it (a release that leaves the model alone gives the same masks).

Patient and study attributes are copied from the first source by highdicom; person names (VR PN) are sanitised
first (:func:`_sanitise_person_names`), since a console may export a PatientName with a backslash (the DICOM value
separator: pydicom then reads several values, which highdicom refuses) or with control characters.
"""
from __future__ import annotations

import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgeseg import __version__
from edgeseg.errors import OutputError
from edgeseg.runtime.arrays import reversed_axes, usable_cores
from edgeseg.runtime.read import planes_from_affine
from edgeseg.runtime.read.volume import Volume
from edgeseg.runtime.write.frame_groups import FrameSpool, save_as
from edgeseg.runtime.write.statistics import MaskSummary
from edgeseg.runtime.write.gc_pause import gc_paused
from edgeseg.typing import StrPath

log = logging.getLogger(__name__)

DICOM_SEG_FILE = "seg.dcm"
SERIES_DESCRIPTION = "edgeseg segmentation"
#: what the descriptions of a result of a bundle marked not for clinical use (the demo) carry
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
#: the SEG's ContentLabel (CS, at most 16 characters) for such a result; "EDGESEG" otherwise
NOT_CLINICAL_LABEL = "NOT_FOR_CLINICAL"
#: the base of the SeriesNumber of each role (+ the source's SeriesNumber, then 3 digits of the series UID)
SERIES_NUMBER_BASE = {"seg": 1000, "sr": 2000}


def precision_of(run: Mapping[str, Any] | None) -> str:
    """The precision(s) a result was made with, from the manifest's ``run`` record: "INT8", "FP32", "FP32+BF16",
    or several joined by "/" when the parts differ (each part's ``precision`` is e.g. "int8+bf16": the model's
    precision and the inference hint; an INT8 model's hint is not named, its unquantized layers are a detail)."""
    names: list[str] = []
    for p in (run or {}).get("parts") or []:
        if not isinstance(p, Mapping):
            continue
        model, _, hint = str(p.get("precision") or "").partition("+")
        name = model.upper() + (f"+{hint.upper()}" if hint in ("bf16", "f16") and model != "int8" else "")
        if name and name not in names:
            names.append(name)
    return "/".join(names) or "unknown precision"


def provenance(bundle: Mapping[str, Any] | None, run: Mapping[str, Any] | None, what: str = "") -> str:
    """A SeriesDescription (LO: at most 64 characters) naming what made a result: ``what`` (e.g. "SEG"), the
    bundle's name and version (the first 12 hex digits of its bundle.json sha256 when it records no version), the
    precision, and "NOT FOR CLINICAL USE" for a bundle marked so (never truncated away: the name is shortened
    first)."""
    bundle = bundle or {}
    name = str(bundle.get("name") or "unknown bundle")
    version = str(bundle.get("version") or "")
    version = f"v{version}" if version else (f"sha {str(bundle.get('bundle_json_sha256'))[:12]}"
                                              if bundle.get("bundle_json_sha256") else "")
    tail = " ".join(t for t in (version, precision_of(run)) if t)
    if bundle.get("not_for_clinical_use"):
        tail += f" {NOT_FOR_CLINICAL_USE}"
    head = f"{what} " if what else ""
    room = 64 - len(head) - len(tail) - 1
    if len(name) > room:
        name = name[:max(room - 1, 1)] + "~"
    return _lo(f"{head}{name} {tail}")


def _lo(text: str) -> str:
    """``text`` as a valid LO value: no backslash or control characters, at most 64 characters."""
    return re.sub(r"[\\\x00-\x1f]", " ", text)[:64].rstrip()


def result_series_number(role: str, source_number: Any, series_uid: str) -> int:
    """The SeriesNumber of a result of ``role`` ("seg", "sr"): (1000 or 2000 + the source's SeriesNumber) * 1000
    + three digits from the result's SeriesInstanceUID. The same result (same UIDs: the same input and model) keeps
    its number; a result that differs (another model, precision or set of instances) gets another one, so
    re-runs stay distinct in a PACS's series list."""
    import hashlib

    try:
        src = int(source_number) if source_number not in (None, "") else 0
    except (TypeError, ValueError):
        src = 0
    digits = int(hashlib.sha256(series_uid.encode()).hexdigest(), 16) % 1000
    return ((SERIES_NUMBER_BASE[role] + max(src, 0)) * 1000 + digits) % 2**31


def model_identity(bundle: Mapping[str, Any] | None, run: Mapping[str, Any] | None) -> list[str]:
    """What identifies the model that made a result, from the run manifest's ``bundle`` record (its
    ``bundle_json_sha256``, which hashes every model file through bundle.json; the bundle name where no digest is
    known) and ``run`` record (``variant``, each part's ``precision`` as compiled): entropy for :func:`result_uids`."""
    bundle = bundle or {}
    run = run or {}
    parts = run.get("parts") or []
    return [
        f"bundle={bundle.get('bundle_json_sha256') or bundle.get('name') or ''}",
        f"variant={run.get('variant') or ''}",
        "precision=" + ",".join(f"{p.get('name', '')}:{p.get('precision', '')}" for p in parts
                                if isinstance(p, Mapping)),
    ]


def result_uids(volume: Volume, model: Sequence[str], role: str, *extra: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the DICOM object of ``role`` ("seg", "sr") made from ``volume``:
    :func:`pydicom.uid.generate_uid` with the source SeriesInstanceUID, the sorted SOPInstanceUIDs of the instances
    stacked, the stack label (a split series), ``model`` (:func:`model_identity`), the role and ``extra`` (what
    else changes the object's content, e.g. the SEG type) as entropy: the same input and model give the same UIDs,
    any difference other ones."""
    from pydicom.uid import generate_uid

    sources = [
        f"series={volume.series_uid or volume.series_id or ''}",
        "instances=" + "\\".join(sorted({str(uid) for uid in volume.dicom.sop_instance_uids})),
        f"stack={volume.stack or ''}",
        *model,
        f"role={role}",
        *extra,
    ]
    return (str(generate_uid(entropy_srcs=[*sources, "series"])),
            str(generate_uid(entropy_srcs=[*sources, "instance"])))


def _sources(volume: Volume) -> list[Any]:
    import pydicom

    datasets = []
    for path in volume.dicom_files:
        try:
            datasets.append(pydicom.dcmread(os.fspath(path), stop_before_pixels=True))
        except Exception as err:
            raise OutputError(
                f"Cannot write the DICOM-SEG for series {volume.series_uid}: the source file {path} is no longer "
                f"readable ({type(err).__name__}: {err}). Keep the series folder unchanged until edgeseg is done."
            ) from err
    return datasets


#: attributes the SEG's and SR's geometry and references are built from: never dropped (an invalid one fails the
#: object with its name, see :func:`clean_source_values`)
_STRUCTURAL = frozenset({
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality",
    "Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "NumberOfFrames", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "BitsAllocated",
    "SamplesPerPixel", "PhotometricInterpretation", "DimensionIndexSequence", "DimensionOrganizationSequence",
})
#: enumerated values (PS3.3) of copied attributes whose invalid values sources were seen to carry
_ENUMERATED: dict[str, frozenset[Any]] = {
    "PregnancyStatus": frozenset({1, 2, 3, 4}),
    "PatientSex": frozenset({"M", "F", "O", ""}),
    "PatientIdentityRemoved": frozenset({"YES", "NO"}),
}
#: VRs whose values are bytes or tags: not checked
_UNCHECKED_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT", "SQ"})
#: VRs whose values are binary numbers (checked as numbers; every other VR as its text)
_BINARY_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
#: the code sequence item attributes without which an item is no code (the item is dropped with them)
_CODE_KEYS = ("CodeValue", "LongCodeValue", "URNCodeValue")


def _invalid(elem: Any) -> str | None:
    """Why ``elem``'s value is not valid for its VR (or its enumerated values), None when it is."""
    from pydicom import config
    from pydicom.multival import MultiValue
    from pydicom.valuerep import validate_value

    if elem.VR in _UNCHECKED_VRS or elem.value is None or elem.value == "":
        return None
    values = list(elem.value) if isinstance(elem.value, (MultiValue, list, tuple)) else [elem.value]
    enum = _ENUMERATED.get(elem.keyword)
    for value in values:
        if enum is not None and value not in enum:
            return f"{value!r} is not one of its defined values ({', '.join(sorted(map(str, enum - {''})))})"
        checked = value if elem.VR in _BINARY_NUMBER_VRS else str(value)
        try:
            validate_value(elem.VR, checked, config.RAISE)
        except (ValueError, TypeError) as err:
            return f"{str(value)[:40]!r} is not a valid {elem.VR} ({str(err).split('. Please see')[0].rstrip('.')})"
    return None


def _describe(elem: Any, path: str) -> str:
    name = elem.keyword or "private attribute"
    return f"{path}{name} {elem.tag}"


def clean_source_values(dataset: Any, path: str = "") -> list[str]:
    """In place, on the in-memory copy of a source (never the file): every attribute whose value is not valid for
    its VR (a date of ``'***'``, an over-long code, an out-of-range number) or not one of its enumerated values
    (PregnancyStatus 0) loses its value (it stays, empty: a Type 2 attribute such as PatientBirthDate is then
    copied empty, as DICOM allows for an unknown value), an empty sequence is removed, and so is a code item left
    without its code value; so what the SEG and SR copy from the source (patient, study, de-identification ...) is
    valid, and a bad source value never costs an object. Structural attributes (UIDs, geometry) are never touched.
    Returns one line per value left out, naming the attribute, its tag and the reason (for the manifest's
    warnings)."""
    dropped: list[str] = []
    for elem in list(dataset):
        if elem.keyword in _STRUCTURAL:
            continue
        if elem.VR == "SQ":
            items = list(elem.value or [])
            for i, item in enumerate(items):
                dropped += clean_source_values(item, f"{path}{elem.keyword or elem.tag}[{i}].")
            kept = [it for it in items if not (_is_code_item_remnant(it))]
            if len(kept) != len(items):
                dropped.append(f"{_describe(elem, path)}: {len(items) - len(kept)} code item(s) without a valid "
                               "code removed")
                elem.value = kept
            if not kept:
                del dataset[elem.tag]
                if items:
                    continue
                dropped.append(f"{_describe(elem, path)}: an empty sequence; removed")
            continue
        reason = _invalid(elem)
        if reason is None:
            continue
        fixed = _repaired(dataset, elem)
        if fixed is not None:
            dropped.append(f"{_describe(elem, path)}: {reason}; {fixed}")
            continue
        if elem.keyword in _CODE_KEYS or elem.keyword == "CodingSchemeDesignator":
            del dataset[elem.tag]  # the item goes (see _is_code_item_remnant): an empty code is no code
        else:
            elem.value = None
        dropped.append(f"{_describe(elem, path)}: {reason}; left out")
    if not path and str(dataset.get("PatientIdentityRemoved", "")).upper() == "YES" and not dataset.get(
            "DeidentificationMethod") and not dataset.get("DeidentificationMethodCodeSequence"):
        # Type 1C when the identity was removed: say what is known rather than copy an invalid or empty value
        dataset.DeidentificationMethod = "de-identified; the source's method description was not valid DICOM"
    return dropped


#: text VRs whose over-long value is shortened to the VR's maximum rather than left out (free text keeps its start)
_TRUNCATED_VRS = ("LO", "SH", "ST", "LT")


def _repaired(dataset: Any, elem: Any) -> str | None:
    """Repair an invalid value where the repair keeps its meaning; what was done, or None when it was not. An
    over-long CodeValue becomes the item's LongCodeValue (DICOM's place for codes over 16 characters); an
    over-long free text is shortened to its VR's maximum length."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import MAX_VALUE_LEN

    value = elem.value
    if isinstance(value, (MultiValue, list, tuple)) or not isinstance(value, str):
        return None
    limit = MAX_VALUE_LEN.get(elem.VR)
    if limit is None or len(value) <= limit or _invalid_text(elem.VR, value[:limit]):
        return None
    if elem.keyword == "CodeValue" and len(value) <= 64 and "LongCodeValue" not in dataset:
        del dataset[elem.tag]
        dataset.LongCodeValue = value
        return "moved to LongCodeValue (0008,0119)"
    if elem.VR in _TRUNCATED_VRS and elem.keyword not in _CODE_KEYS:
        elem.value = value[:limit].rstrip()
        return f"shortened to {limit} characters"
    return None


def _invalid_text(vr: str, value: str) -> bool:
    from pydicom import config
    from pydicom.valuerep import validate_value

    try:
        validate_value(vr, value, config.RAISE)
    except (ValueError, TypeError):
        return True
    return False


def _is_code_item_remnant(item: Any) -> bool:
    """A code sequence item that lost its code value (or designator) to :func:`clean_source_values`."""
    has_code = any(k in item for k in _CODE_KEYS)
    return ("CodeMeaning" in item or "CodingSchemeDesignator" in item) and (
        not has_code or "CodingSchemeDesignator" not in item)


def _clean_source(source: Any, series: str | None, warnings: list[str] | None) -> None:
    """:func:`clean_source_values` on the source whose values the SEG and SR copy (highdicom copies the patient,
    study and the other modules from the first source; of the others it takes UIDs and geometry, which are never
    cleaned); each removal is logged and added to ``warnings`` (the manifest's) with the prefix "invalid source
    value: "."""
    for line in dict.fromkeys(clean_source_values(source)):
        text = f"invalid source value: {line}"
        log.info("series %s: %s", series, text)
        if warnings is not None and text not in warnings:
            warnings.append(text)


_PN_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]+")


def _clean_pn(value: Any) -> str:
    return _PN_UNSAFE.sub(" ", str(value)).strip(" ")


def _sanitise_person_names(dataset: Any) -> list[str]:
    """In place, on the in-memory copy of a source: every top-level person name (VR PN) loses backslashes and
    control characters (CR, LF, ESC, ...; each run becomes one space), and one whose dictionary VM is 1 but which
    was read as several values (``DOE\\JOHN``) becomes one value (``DOE JOHN``). Returns the keywords changed.
    Carets and "=" (the PN component separators) are kept."""
    from pydicom.datadict import dictionary_VM
    from pydicom.multival import MultiValue

    changed = []
    for elem in dataset:
        if elem.VR != "PN" or elem.value is None or elem.value == "":
            continue
        try:
            single = dictionary_VM(elem.tag) == "1"
        except KeyError:  # a private or unknown tag
            single = False
        values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
        cleaned = [_clean_pn(v) for v in values]
        if single and len(cleaned) > 1:
            cleaned = [" ".join(v for v in cleaned if v)]
        if cleaned != [str(v) for v in values]:
            elem.value = cleaned[0] if len(cleaned) == 1 else cleaned
            changed.append(elem.keyword or str(elem.tag))
    return changed


def _group_item(ds: Any, index: int, sequence: str) -> Any | None:
    """The item of functional group ``sequence`` for frame ``index`` (0-based) of a multi-frame ``ds``: from its
    Per-frame Functional Groups, else from the Shared Functional Groups; None if neither has it."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for group in (per_frame[index] if index < len(per_frame) else None, shared[0] if shared else None):
        if group is not None and sequence in group and len(group[sequence].value) > 0:
            return group[sequence].value[0]
    return None


def _share_group(ds: Any, sequence: str, item: Any) -> None:
    """In the in-memory copy of a multi-frame source: ``item`` becomes the shared ``sequence`` (and per-frame copies
    of it are dropped, as a functional group is either shared or per frame)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    if not ds.get("SharedFunctionalGroupsSequence"):
        ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    setattr(ds.SharedFunctionalGroupsSequence[0], sequence, Sequence([item]))
    for frame_item in ds.get("PerFrameFunctionalGroupsSequence") or []:
        if sequence in frame_item:
            delattr(frame_item, sequence)


def _explicit_planes(volume: Volume) -> dict[str, Any]:
    """Plane positions, orientation and pixel measures of the volume's own grid (from its affine, RAS -> LPS)."""
    import highdicom as hd

    geo = planes_from_affine(volume.affine, volume.shape[2])
    return {
        "plane_positions": [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in ipp])
                            for ipp in geo["positions"]],
        "plane_orientation": hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT, geo["iop"]),
        "pixel_measures": hd.PixelMeasuresSequence(geo["pixel_spacing"], geo["slice_spacing"],
                                                   geo["slice_spacing"]),
    }


def _plane_geometry(volume: Volume, sources: list[Any], frames: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The segmentation frames in the order highdicom gets them and the geometry it must be given explicitly
    (``plane_positions``, ``plane_orientation``, ``pixel_measures``); see the module docstring. Adjusts the
    in-memory ``sources`` where highdicom would otherwise refuse them (never the files)."""
    import copy

    import highdicom as hd

    patient = hd.CoordinateSystemNames.PATIENT
    refs = list(volume.dicom.frames)
    n_planes = volume.shape[2]
    kwargs: dict[str, Any] = {}
    multiframe = len(sources) == 1 and volume.dicom.multiframe
    if not multiframe and (volume.dicom.multiframe or len(sources) != n_planes):
        return frames, _explicit_planes(volume)  # several multi-frame files: the volume's own geometry
    if multiframe:
        ds = sources[0]
        indices = [int(idx or 0) for _, idx in refs]  # multi-frame: every slice has its frame index
        if len(indices) != n_planes:
            raise ValueError(f"the volume has {n_planes} planes but records {len(indices)} source frames")
        orientations = [_group_item(ds, i, "PlaneOrientationSequence") for i in indices]
        measures = _group_item(ds, indices[0], "PixelMeasuresSequence")
        positions = [_group_item(ds, i, "PlanePositionSequence") for i in indices]
        if any(o is None for o in orientations) or measures is None or any(p is None for p in positions):
            raise ValueError("the multi-frame source lacks a frame's plane position, orientation or pixel measures")
        iops = [[float(v) for v in o.ImageOrientationPatient] for o in orientations if o is not None]
        ipps = [[float(v) for v in p.ImagePositionPatient] for p in positions if p is not None]
    else:
        measures = sources[0]
        iops = [[float(v) for v in ds.ImageOrientationPatient] for ds in sources]
        ipps = [[float(v) for v in ds.ImagePositionPatient] for ds in sources]

    noisy = any(iop != iops[0] for iop in iops[1:])
    if noisy:  # one orientation for the stack: the reader's (the stacked planes agree within its tolerance)
        orientation = hd.PlaneOrientationSequence(patient, planes_from_affine(volume.affine, n_planes)["iop"])
        spread = float(np.max(np.abs(np.asarray(iops) - np.asarray(iops[0]))))
        log.info("DICOM-SEG for series %s: the source planes' orientations differ by up to %.2g; the SEG uses the "
                 "stack's one orientation and explicit plane positions", volume.series_uid, spread)
    else:
        orientation = hd.PlaneOrientationSequence(patient, iops[0])
    thickness = measures.get("SliceThickness")
    between = measures.get("SpacingBetweenSlices")
    pixel_measures = hd.PixelMeasuresSequence(
        [float(v) for v in measures.PixelSpacing],
        float(thickness) if thickness not in (None, "") else float(volume.dicom.slice_spacing_mm or 1.0),
        float(between) if between not in (None, "") else None)

    if multiframe:
        ds = sources[0]
        _share_group(ds, "PlaneOrientationSequence", copy.deepcopy(orientation[0]))
        _share_group(ds, "PixelMeasuresSequence", copy.deepcopy(pixel_measures[0]))
        kwargs.update(plane_orientation=orientation, pixel_measures=pixel_measures)
        n_frames = int(ds.get("NumberOfFrames", 1))
        if not noisy and n_frames == n_planes and sorted(indices) == list(range(n_frames)):
            in_file_order = np.zeros_like(frames)
            in_file_order[indices] = frames
            return in_file_order, kwargs
    elif noisy:
        for ds in sources:
            ds.ImageOrientationPatient = orientation[0].ImageOrientationPatient
        kwargs.update(plane_orientation=orientation, pixel_measures=pixel_measures)
    else:
        return frames, kwargs
    kwargs["plane_positions"] = [hd.PlanePositionSequence(patient, ipp) for ipp in ipps]
    return frames, kwargs


def _segment_description(number: int, value: int, name: str, algorithm: Any) -> Any:
    """Segment ``number`` (label ``value`` called ``name``): label, SNOMED CT codes, the preview's colour."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from edgeseg.runtime.write.preview import label_color
    from edgeseg.runtime.write.structure_codes import structure_code

    code = structure_code(name)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:64],
        segmented_property_category=hd.sr.CodedConcept(code.category[1], code.category[0], code.category[2]),
        segmented_property_type=hd.sr.CodedConcept(code.type[1], code.type[0], code.type[2]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*label_color(value)),
    )
    if code.laterality is not None:
        modifier = Dataset()
        modifier.CodingSchemeDesignator, modifier.CodeValue, modifier.CodeMeaning = code.laterality
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = Sequence(
            [modifier])
    return description


def _contributing_equipment(bundle: Mapping[str, Any] | None) -> Any:
    """edgeseg as the Processing Equipment, with the model bundle (name, bundle.json sha256) that segmented."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    bundle = bundle or {}
    name = str(bundle.get("name") or "unknown bundle")
    digest = str(bundle.get("bundle_json_sha256") or "")
    versions = [f"edgeseg {__version__}"[:64]]
    if digest:
        versions.append(f"bundle sha256 {digest[:16]}")
    return hd.ContributingEquipment(
        manufacturer="edgeseg",
        contribution_datetime=datetime.now(),
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=f"edgeseg model bundle {name}"[:64],
        software_versions=versions,
        contribution_description=(f"Automatic segmentation by edgeseg {__version__} with the model bundle {name!r}"
                                  + (f" (bundle.json sha256 {digest})" if digest else ""))[:1024],
    )


@gc_paused()
def write_dicom_seg(path: StrPath, volume: Volume, labelmap: np.ndarray, labels: Mapping[int, str], *,
                    segmentation_type: str = "BINARY", series_number: int | None = None,
                    bundle: Mapping[str, Any] | None = None,
                    run: Mapping[str, Any] | None = None,
                    summary: MaskSummary | None = None,
                    warnings: list[str] | None = None) -> dict[int, dict[str, Any]]:
    """Write a DICOM Segmentation of ``labelmap`` (shape (I, J, K) of the DICOM ``volume``) to ``path``.

    ``segmentation_type``: "BINARY" or "LABELMAP" (case-insensitive). ``bundle``: the run manifest's ``bundle``
    record (``name``, ``bundle_json_sha256``), named in the ContributingEquipmentSequence; with ``run`` (the
    manifest's ``run`` record: variant, precision per part) it also makes the UIDs (:func:`result_uids`).
    ``summary``: the mask's :func:`~edgeseg.runtime.write.statistics.summarize_mask` when the caller has it (the
    labels present come from it instead of another pass over the mask).
    ``warnings``: the manifest's warnings, extended with each source value left out (:func:`clean_source_values`).

    Returns {segment number: {"label": value, "name": name}} for the segments written (present labels only).
    Raises ValueError for a non-DICOM volume or an empty mask, :class:`OutputError` if the sources are unreadable;
    highdicom's own errors (e.g. an unsupported source) propagate.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if volume.kind != "dicom" or not volume.dicom_files:
        raise ValueError("a DICOM-SEG needs a volume read from DICOM (its source instances)")
    if tuple(labelmap.shape) != tuple(volume.array.shape):
        raise ValueError(f"labelmap shape {labelmap.shape} differs from the volume's {volume.array.shape}")
    seg_type = str(segmentation_type).upper()
    if seg_type not in ("BINARY", "LABELMAP"):
        raise ValueError(f"segmentation_type must be BINARY or LABELMAP, not {segmentation_type!r}")
    present = summary.present if summary is not None else [int(v) for v in np.unique(labelmap) if v > 0]
    if not present:
        raise ValueError("the mask is empty: no DICOM-SEG is written for an empty segmentation")
    lut = np.zeros(int(max(present)) + 1, dtype=np.uint16 if len(present) > 255 else np.uint8)
    segments: dict[int, dict[str, Any]] = {}
    for number, value in enumerate(present, start=1):
        lut[value] = number
        segments[number] = {"label": value, "name": str(labels.get(value, f"label_{value}"))}
    # (K, Rows, Columns) segment numbers, C-contiguous: highdicom reads the frames plane by plane (and, for BINARY,
    # compares each plane with each segment number), so each plane must be one compact block
    frames = lut[reversed_axes(np.asarray(labelmap), threads=usable_cores())]
    if volume.dicom.rows_reversed:
        # GE epi_pepolar: the sources store their rows reversed under an upright header and the reader reversed
        # them back; each SEG frame references a source instance and has that instance's own position and
        # orientation, so its rows go back into the instance's stored order (it overlays the pixels as stored)
        frames = np.ascontiguousarray(frames[:, ::-1, :])

    sources = _sources(volume)
    # the first source only: cleaning the others too cost 0.25-0.4 s per SEG of 300-400 instances and changed
    # nothing the SEG holds (see _clean_source)
    _clean_source(sources[0], volume.series_uid, warnings)
    changed = sorted(_sanitise_person_names(sources[0]))
    if changed:
        log.warning("DICOM-SEG for series %s: person name(s) %s held a backslash or control characters; the SEG "
                    "carries them as one value with those characters replaced by spaces", volume.series_uid,
                    ", ".join(changed))
    frames, geometry = _plane_geometry(volume, sources, frames)

    algorithm = hd.AlgorithmIdentificationSequence(
        name="edgeseg", family=codes.cid7162.ArtificialIntelligence, version=__version__, source="edgeseg")
    descriptions = [_segment_description(number, info["label"], info["name"], algorithm)
                    for number, info in segments.items()]
    series_uid, sop_uid = result_uids(volume, model_identity(bundle, run), "seg", f"type={seg_type}")
    if series_number is None:
        series_number = result_series_number("seg", sources[0].get("SeriesNumber"), series_uid)
    description = provenance(bundle, run, "SEG")
    demo = bool((bundle or {}).get("not_for_clinical_use"))
    with FrameSpool(Path(path).parent) as spool:  # the frames on disk, not twice in memory (frame_groups)
        seg = spool.subclass(hd.seg.Segmentation)(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=seg_type,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=int(series_number) % 2**31,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer="edgeseg",
            manufacturer_model_name="edgeseg",
            software_versions=__version__,
            device_serial_number="0",
            content_description=description,
            content_creator_name="EDGESEG^AUTOMATIC",
            content_label=NOT_CLINICAL_LABEL if demo else "EDGESEG",
            series_description=description,
            omit_empty_frames=True,
            contributing_equipment=[_contributing_equipment(bundle)],
            **geometry,
        )
        del frames  # highdicom keeps its own frames (spooled); the planes are not needed again
        spool.attach(seg)
        save_as(seg, path)  # pydicom's save_as, each distinct per-frame group encoded once
    log.info("wrote %s DICOM-SEG with %d segment(s) to %s", seg_type, len(segments), path)
    return segments
