"""``seg.dcm``: a DICOM Segmentation (highdicom) referencing the source images, for PACS and viewers.

Type: BINARY by default (one 1-bit frame per segment and source plane, the most widely supported); "LABELMAP"
(one frame per plane holding segment numbers; DICOM 2024, small, less viewer support) on request.

Only labels present in the mask become segments. They are renumbered 1..n in ascending label order (DICOM needs
consecutive segment numbers); each segment's SegmentLabel is the label name, and the mapping segment number ->
(label value, name) is returned for the run manifest. Segmented property category/type: SCT "Anatomical
Structure" / "Organ" (generic codes: the label names carry the meaning). Algorithm: AUTOMATIC, name "edgeseg",
family DCM "Artificial Intelligence".

Geometry: ``labelmap`` is indexed (i, j, k) like :class:`Volume`, where plane k is ``pixel_array.T`` of source
plane k; so source plane k's segmentation frame is ``labelmap[:, :, k].T`` with shape (Rows, Columns). For a
classic series the frames are passed in k order together with the source instances in k order
(``Volume.dicom_files``); for an enhanced multi-frame source whose every frame is in the volume they are put
back in the file's frame order (``Volume.extra["frames"]``); otherwise explicit plane positions (from the
affine, RAS -> LPS) are given to highdicom.

Patient and study attributes are copied from the first source by highdicom; person names (VR PN) are sanitised
first (:func:`_sanitise_person_names`), since a console may export a PatientName with a backslash (the DICOM value
separator: pydicom then reads several values, which highdicom refuses) or with control characters.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping

import numpy as np

from edgeseg import __version__
from edgeseg.errors import OutputError
from edgeseg.runtime.read import planes_from_affine
from edgeseg.runtime.read.volume import Volume
from edgeseg.typing import StrPath

log = logging.getLogger(__name__)

DICOM_SEG_FILE = "seg.dcm"
SERIES_DESCRIPTION = "edgeseg segmentation"


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


def _explicit_planes(volume: Volume) -> dict[str, Any]:
    import highdicom as hd

    geo = planes_from_affine(volume.affine, volume.shape[2])
    return {
        "plane_positions": [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in ipp])
                            for ipp in geo["positions"]],
        "plane_orientation": hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT, geo["iop"]),
        "pixel_measures": hd.PixelMeasuresSequence(geo["pixel_spacing"], geo["slice_spacing"],
                                                   geo["slice_spacing"]),
    }


def write_dicom_seg(path: StrPath, volume: Volume, labelmap: np.ndarray, labels: Mapping[int, str], *,
                    segmentation_type: str = "BINARY", series_number: int | None = None) -> dict[int, dict[str, Any]]:
    """Write a DICOM Segmentation of ``labelmap`` (shape (I, J, K) of the DICOM ``volume``) to ``path``.

    Returns {segment number: {"label": value, "name": name}} for the segments written (present labels only).
    Raises ValueError for a non-DICOM volume or an empty mask, :class:`OutputError` if the sources are unreadable;
    highdicom's own errors (e.g. an unsupported source) propagate.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if volume.kind != "dicom" or not volume.dicom_files:
        raise ValueError("a DICOM-SEG needs a volume read from DICOM (its source instances)")
    if tuple(labelmap.shape) != tuple(volume.array.shape):
        raise ValueError(f"labelmap shape {labelmap.shape} differs from the volume's {volume.array.shape}")
    seg_type = str(segmentation_type).upper()
    if seg_type not in ("BINARY", "LABELMAP"):
        raise ValueError(f"segmentation_type must be BINARY or LABELMAP, not {segmentation_type!r}")
    present = [int(v) for v in np.unique(labelmap) if v > 0]
    if not present:
        raise ValueError("the mask is empty: no DICOM-SEG is written for an empty segmentation")
    lut = np.zeros(int(max(present)) + 1, dtype=np.uint16 if len(present) > 255 else np.uint8)
    segments: dict[int, dict[str, Any]] = {}
    for number, value in enumerate(present, start=1):
        lut[value] = number
        segments[number] = {"label": value, "name": str(labels.get(value, f"label_{value}"))}
    frames = lut[np.asarray(labelmap)].transpose(2, 1, 0)  # (K, Rows, Columns), segment numbers

    sources = _sources(volume)
    changed = sorted({kw for ds in sources for kw in _sanitise_person_names(ds)})
    if changed:
        log.warning("DICOM-SEG for series %s: person name(s) %s held a backslash or control characters; the SEG "
                    "carries them as one value with those characters replaced by spaces", volume.series_uid,
                    ", ".join(changed))
    kwargs: dict[str, Any] = {}
    frame_refs = volume.extra.get("frames") or ()
    if len(sources) == 1 and volume.extra.get("multiframe"):
        n_frames = int(sources[0].get("NumberOfFrames", 1))
        indices = [int(idx) for _, idx in frame_refs]
        if len(indices) == n_frames == volume.shape[2] and sorted(indices) == list(range(n_frames)):
            in_file_order = np.zeros_like(frames)
            in_file_order[indices] = frames
            frames = in_file_order
        else:
            kwargs.update(_explicit_planes(volume))
    elif len(sources) != volume.shape[2]:
        kwargs.update(_explicit_planes(volume))

    algorithm = hd.AlgorithmIdentificationSequence(
        name="edgeseg", family=codes.cid7162.ArtificialIntelligence, version=__version__, source="edgeseg")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=info["name"][:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, info in segments.items()
    ]
    src_number = sources[0].get("SeriesNumber")
    if series_number is None:
        try:
            series_number = 1000 + int(src_number) if src_number not in (None, "") else 1000
        except (TypeError, ValueError):
            series_number = 1000
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=int(series_number) % 2**31,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="edgeseg",
        manufacturer_model_name="edgeseg",
        software_versions=__version__,
        device_serial_number="0",
        content_description=SERIES_DESCRIPTION,
        content_creator_name="EDGESEG^AUTOMATIC",
        content_label="EDGESEG",
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=True,
        **kwargs,
    )
    seg.save_as(os.fspath(path))
    log.info("wrote %s DICOM-SEG with %d segment(s) to %s", seg_type, len(segments), path)
    return segments
