"""``sr.dcm``: a DICOM Structured Report (Comprehensive 3D SR, highdicom) with the volume of every segmented
structure, for PACS and reporting systems that read measurements rather than masks.

Content: a TID 1500 Measurement Report (title DCM 126000 "Imaging Measurement Report", procedure reported SCT
363679005 "Imaging procedure"), observed by a device (TID 1004): edgeseg, its version, and the model bundle (name
and bundle.json sha256) as the device's model. One TID 1411 Volumetric ROI Measurements group per segment of the
DICOM-SEG written beside it, in segment order:

* the ROI: the segment (Referenced Segment: the SEG's SOP Class and Instance UIDs and the segment number) and the
  source series it was made from (Source Series For Segmentation: the source SeriesInstanceUID);
* tracking identifier: the structure name, and a UID derived from the SR's own and the segment number;
* finding type: the SEG's Segmented Property Type of the structure, finding category its Segmented Property Category
  (:mod:`edgeseg.runtime.write.structure_codes`); finding site: the same type, with its laterality (SCT 7771000
  "Left" / 24028007 "Right") for a sided structure, which the finding type alone does not tell apart;
* the algorithm (TID 4019: edgeseg and its version), once per group, for all its measurements;
* measurement SCT 118565006 "Volume" in UCUM "ml" (``statistics.json``'s ``volume_ml``);
* the mean intensity (``mean_intensity``, derivation SCT 373098007 "Mean") where it has a coded quantity and unit:
  for MR, DCM 110852 "MR signal intensity" in UCUM "[arb'U]" (arbitrary units: MR intensities are not
  calibrated); for CT, DCM 112031 "Attenuation Coefficient" in "[hnsf'U]" (Hounsfield units, the rescale applied).
  For any other modality the measurement is left out: DICOM has no quantity for "pixel value of a modality whose
  units are unknown", and a measurement with an invented concept or unit would be wrong, not merely imprecise.

Patient, study and the StudyInstanceUID are the source's (the first source instance is highdicom's first evidence;
its person names are sanitised as for the SEG). The evidence (Current Requested Procedure Evidence Sequence) lists
the SEG and every source instance. UIDs: :func:`edgeseg.runtime.write.dicomseg.result_uids` with role "sr" and the
SEG's SOPInstanceUID (the SR's content depends on it), so a re-run of the same input with the same bundle writes the
same SR UIDs. The document is PRELIMINARY, PARTIAL and UNVERIFIED (an automatic result nobody has signed).
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Mapping

from edgeseg import __version__
from edgeseg.errors import OutputError
from edgeseg.runtime.read.volume import FILE_UID_KEYS, Volume
from edgeseg.runtime.write.dicomseg import (
    _clean_source, _sanitise_person_names, _sources, model_identity, provenance, result_series_number, result_uids,
)
from edgeseg.runtime.write.frame_groups import save_as
from edgeseg.runtime.write.gc_pause import gc_paused
from edgeseg.typing import StrPath

log = logging.getLogger(__name__)

DICOM_SR_FILE = "sr.dcm"
SERIES_DESCRIPTION = "edgeseg measurements"

#: modality -> (quantity (scheme, value, meaning), UCUM unit (value, meaning)) of a mean intensity that DICOM can
#: express; see the module docstring for why other modalities have none
INTENSITY_QUANTITIES: dict[str, tuple[tuple[str, str, str], tuple[str, str]]] = {
    "MR": (("DCM", "110852", "MR signal intensity"), ("[arb'U]", "arbitrary unit")),
    "CT": (("DCM", "112031", "Attenuation Coefficient"), ("[hnsf'U]", "Hounsfield unit")),
}


def _coded(code: tuple[str, str, str]) -> Any:
    import highdicom as hd

    scheme, value, meaning = code
    return hd.sr.CodedConcept(value, scheme, meaning)


def _measurements(structure: Mapping[str, Any], modality: str) -> list[Any]:
    """TID 300 measurements of one structure's statistics record (``volume_ml``, ``mean_intensity``). No algorithm
    identification of their own: their group's (TID 1411's TID 4019, "the algorithm used for making measurements")
    names edgeseg and its version once; repeating it per measurement was a third of the report's content items
    and of its writing time."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    measurements = [hd.sr.Measurement(
        name=codes.SCT.Volume, value=float(structure["volume_ml"]),
        unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter"))]
    mean = structure.get("mean_intensity")
    quantity = INTENSITY_QUANTITIES.get(modality.upper())
    if mean is not None and quantity is not None:
        concept, (unit, unit_meaning) = quantity
        measurements.append(hd.sr.Measurement(
            name=_coded(concept), value=float(mean), unit=hd.sr.CodedConcept(unit, "UCUM", unit_meaning),
            derivation=codes.SCT.Mean))
    return measurements


def _observer(bundle: Mapping[str, Any], model: list[str]) -> Any:
    """TID 1002 observer context: edgeseg as the device, the model bundle as its model."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    name = str(bundle.get("name") or "unknown bundle")
    digest = str(bundle.get("bundle_json_sha256") or "")
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=str(generate_uid(entropy_srcs=["edgeseg device observer", *model])),
        name=f"edgeseg {__version__}",
        manufacturer_name="edgeseg",
        model_name=f"model bundle {name}" + (f" (bundle.json sha256 {digest})" if digest else ""),
    )
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


#: what the evidence sequence takes from each source instance after the first
_EVIDENCE_TAGS = FILE_UID_KEYS


def _evidence(volume: Volume) -> list[Any]:
    """The source instances as evidence: the first in full (highdicom copies the patient and study from it; its
    person names sanitised as for the SEG), the others with only the UIDs their evidence items hold
    (:data:`_EVIDENCE_TAGS`), as the reader kept them (``DicomSource.file_uids``); a file whose UIDs the reader
    did not keep is read again for them. Reading and copying every header in full costs more than the report."""
    import pydicom
    from pydicom.dataset import Dataset

    first = _sources(replace(volume, dicom_files=volume.dicom_files[:1]))
    _sanitise_person_names(first[0])
    kept = volume.dicom.file_uids
    rest = []
    for index, path in enumerate(volume.dicom_files[1:], start=1):
        uids = kept[index] if len(kept) == len(volume.dicom_files) else ()
        if len(uids) == len(_EVIDENCE_TAGS) and all(uids):
            item = Dataset()
            for key, uid in zip(_EVIDENCE_TAGS, uids):
                setattr(item, key, uid)
            rest.append(item)
            continue
        try:
            rest.append(pydicom.dcmread(os.fspath(path), stop_before_pixels=True, specific_tags=list(_EVIDENCE_TAGS)))
        except Exception as err:
            raise OutputError(
                f"Cannot write the DICOM SR for series {volume.series_uid}: the source file {path} is no longer "
                f"readable ({type(err).__name__}: {err}). Keep the series folder unchanged until edgeseg is done."
            ) from err
    return [*first, *rest]


def _document(*, evidence: list[Any], report: Any, **kwargs: Any) -> Any:
    """highdicom's ``Comprehensive3DSR`` of the measurement ``report`` (its root container and tree as highdicom's
    templates built and checked them), with ``evidence``, made without the constructor's copies of the tree.

    The constructor deep-copies the whole content tree, re-types the copy for its ``content`` property and searches
    the tree for referenced instances to check them against the evidence: for 50 structures (2000 content items)
    0.2 of the SR's 0.5 s, for a tree it then stores as given. It gets the root container without its children
    and they are attached after; the check it leaves out holds by construction (the one instance the report
    references is the SEG, which is in ``evidence``: a report that comes to reference others, key images say,
    must add them to ``evidence`` itself). The dataset is highdicom's own, element for element
    (``tests/runtime/test_dicom_sr.py``); only the object's ``content`` property holds the root alone."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    root = report[0]
    shell = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            shell.add(element)
    shell.ContentSequence = []  # highdicom's search for references wants one
    sr = hd.sr.Comprehensive3DSR(evidence=evidence, content=shell, **kwargs)
    sr.ContentSequence = root.ContentSequence
    return sr


@gc_paused()
def write_dicom_sr(path: StrPath, volume: Volume, seg_path: StrPath, segments: Mapping[int, Mapping[str, Any]],
                   statistics: Mapping[str, Any], *, bundle: Mapping[str, Any] | None = None,
                   run: Mapping[str, Any] | None = None, series_number: int | None = None,
                   warnings: list[str] | None = None) -> dict[str, str]:
    """Write the measurement report of the DICOM-SEG at ``seg_path`` (written from ``volume``) to ``path``.

    ``segments``: what :func:`~edgeseg.runtime.write.dicomseg.write_dicom_seg` returned (segment number ->
    {"label", "name"}); ``statistics``: :func:`~edgeseg.runtime.write.statistics.compute_statistics` of the same
    mask (its ``structures`` by name give the volumes, in ml, and mean intensities). ``bundle``/``run``: the run
    manifest's records (the observer's model, the UIDs).

    Returns {"series_instance_uid", "sop_instance_uid"} of the SR. Raises ValueError for a non-DICOM volume, no
    segments, or a segment without statistics; :class:`~edgeseg.errors.OutputError` if the sources are unreadable;
    highdicom's own errors propagate.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from edgeseg.runtime.write.structure_codes import structure_code

    if volume.kind != "dicom" or not volume.dicom_files:
        raise ValueError("a DICOM SR needs a volume read from DICOM (its source instances)")
    if not segments:
        raise ValueError("the DICOM-SEG has no segments: there is nothing to measure")
    structures = statistics.get("structures") or {}
    bundle = bundle or {}
    # the SEG's UIDs only (its evidence item and references): not its per-frame groups
    seg = pydicom.dcmread(os.fspath(seg_path), stop_before_pixels=True, specific_tags=list(_EVIDENCE_TAGS))
    sources = _evidence(volume)  # the first in full (person names sanitised), the others' UIDs only
    # highdicom copies the patient and study from the first: its values are cleaned as for the SEG (whose lines are
    # in ``warnings`` already); the others carry only UIDs
    _clean_source(sources[0], volume.series_uid, warnings)
    model = model_identity(bundle, run)
    series_uid, sop_uid = result_uids(volume, model, "sr", f"seg={seg.SOPInstanceUID}")
    modality = str(volume.dicom.modality or sources[0].get("Modality") or "")
    algorithm = hd.sr.AlgorithmIdentification(name="edgeseg", version=__version__)

    groups = []
    for number in sorted(int(n) for n in segments):
        name = str(segments[number]["name"])
        if name not in structures:
            raise ValueError(f"segment {number} ({name}) has no statistics")
        code = structure_code(name)
        laterality = _coded(code.laterality) if code.laterality is not None else None
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=str(generate_uid(entropy_srcs=[sop_uid, f"segment={number}"])), identifier=name[:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(str(volume.series_uid))),
            finding_type=_coded(code.type),
            finding_category=_coded(code.category),
            finding_sites=[hd.sr.FindingSite(anatomic_location=_coded(code.type), laterality=laterality)],
            algorithm_id=algorithm,
            measurements=_measurements(structures[name], modality),
        ))
    report = hd.sr.MeasurementReport(
        observation_context=_observer(bundle, model),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    if series_number is None:
        series_number = result_series_number("sr", sources[0].get("SeriesNumber"), series_uid)
    sr = _document(
        evidence=[*sources, seg],
        report=report,
        series_instance_uid=series_uid,
        series_number=int(series_number) % 2**31,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="edgeseg",
        series_description=provenance(bundle, run, "SR"),
    )
    save_as(sr, path)  # pydicom's save_as, the content tree's sequences encoded by frame_groups
    log.info("wrote DICOM SR with %d measurement group(s) to %s", len(groups), path)
    return {"series_instance_uid": series_uid, "sop_instance_uid": sop_uid}
