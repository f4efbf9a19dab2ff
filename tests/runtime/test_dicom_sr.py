"""DICOM SR (``sr.dcm``, TID 1500 measurement report) beside the DICOM-SEG: valid (dciodvfy), read back by highdicom
with the volumes of statistics.json, referencing the SEG's segments and the source series; partial when it cannot be
written; ``--no-dicom-sr``. And the SEG's and SR's UIDs: the same for a re-run, others for another model."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from helpers.seg_validation import dciodvfy_errors, sr_dciodvfy_errors
from edgeseg.cli import main
from edgeseg.demo.dicom_series import write_dicom_series
from edgeseg.runtime.options import OutputOptions
from edgeseg.runtime.read import read_series
from edgeseg.runtime.write import COMPLETE, PARTIAL, results as results_module, write_results
from edgeseg.runtime.write.structure_codes import structure_code

#: a run manifest's model records, as edgeseg.runtime.segment.run_manifest writes them
MANIFEST: dict[str, Any] = {
    "bundle": {"name": "demo", "bundle_json_sha256": "0123456789abcdef" * 4},
    "run": {"variant": "fast", "parts": [{"name": "part0", "precision": "fp32"}]},
}


@pytest.fixture
def axial_series(tmp_path: Path, dicom_series_dirs: dict[str, Path]) -> Path:
    dst = tmp_path / "series"
    shutil.copytree(dicom_series_dirs["axial"], dst)
    return dst


def small_series(folder: Path, n: int = 6, *, seed: int = 0) -> list[Path]:
    """A 12 x 10 x n classic MR series at 2 mm (demo writer), values 0..999."""
    array = np.random.default_rng(seed).integers(0, 1000, size=(12, 10, n)).astype(np.int16)
    return write_dicom_series((array, np.diag([2.0, 2.0, 2.0, 1.0])), folder, series_description="t1 small")


def _uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


@pytest.mark.parametrize("seg_type", ["labelmap", "binary"])
def test_sr_measures_every_segment_of_the_seg(seg_type: str, axial_series: Path, seg_array: np.ndarray,
                                              labels: dict[int, str]) -> None:
    vol = read_series(axial_series)
    result = write_results(vol, seg_array, labels, OutputOptions(preview=False, seg_type=seg_type), MANIFEST)
    assert result.status == COMPLETE
    path = result.files["dicom_sr"]
    assert path == result.output_dir / "sr.dcm" and result.manifest["outputs"]["dicom_sr"] == "sr.dcm"

    # the standard's validator: a BINARY SEG's SR unfiltered; a LABELMAP SEG's less dciodvfy's one known false error
    errors, _ = (dciodvfy_errors if seg_type == "binary" else sr_dciodvfy_errors)(path)
    assert not errors, "\n".join(errors)

    sr = hd.sr.srread(path)
    seg = pydicom.dcmread(result.files["dicom_seg"], stop_before_pixels=True)
    source = pydicom.dcmread(vol.dicom_files[0], stop_before_pixels=True)
    assert sr.Modality == "SR" and sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == source.StudyInstanceUID == seg.StudyInstanceUID
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
                    "AccessionNumber"):
        assert sr.get(keyword) == source.get(keyword), keyword
    assert sr.SeriesInstanceUID not in (source.SeriesInstanceUID, seg.SeriesInstanceUID)

    # evidence: the SEG and every source instance
    evidence = {sop for _, _, sop, _ in sr.get_evidence()}
    assert evidence == {str(seg.SOPInstanceUID), *map(str, vol.dicom.sop_instance_uids)}

    # observer: the device edgeseg with the model bundle
    (observer,) = [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121013"]
    assert observer.TextValue.startswith("edgeseg ")
    model = [item.TextValue for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121015"]
    assert model and "demo" in model[0] and MANIFEST["bundle"]["bundle_json_sha256"] in model[0]

    statistics = json.loads((result.output_dir / "statistics.json").read_text(encoding="utf-8"))["structures"]
    segments = {int(n): s for n, s in result.manifest["dicom_seg_segments"].items()}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(segments) == seg.SegmentSequence[-1].SegmentNumber
    for number, group in zip(sorted(segments), groups):
        name = segments[number]["name"]
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_sop_class_uid == seg.SOPClassUID
        assert ref.referenced_segment_numbers == [number]
        assert ref.source_series_for_segmentation.value == vol.series_uid
        assert str(group.tracking_identifier) == name
        code = structure_code(name)
        segment = next(s for s in seg.SegmentSequence if s.SegmentNumber == number)
        assert group.finding_type.value == code.type[1] == segment.SegmentedPropertyTypeCodeSequence[0].CodeValue
        assert group.finding_category.value == code.category[1]
        (site,) = group.finding_sites
        assert site.value.value == code.type[1]
        assert (site.laterality.value if site.laterality is not None else None) == (
            code.laterality[1] if code.laterality else None)
        (volume,) = group.get_measurements(name=codes.SCT.Volume)
        assert volume.unit.value == "ml" and volume.unit.scheme_designator == "UCUM"
        assert volume.value == pytest.approx(statistics[name]["volume_ml"], rel=1e-12, abs=1e-9)
        (mean,) = group.get_measurements(name=hd.sr.CodedConcept("110852", "DCM", "MR signal intensity"))
        assert mean.unit.value == "[arb'U]"
        assert mean.value == pytest.approx(statistics[name]["mean_intensity"], rel=1e-9)
        # the algorithm that made the measurements, once per group (TID 4019 in TID 1411), not per measurement
        items = group[0].ContentSequence
        names = [i.TextValue for i in items if i.ConceptNameCodeSequence[0].CodeValue == "111001"]
        assert names == ["edgeseg"]
        for measurement in (volume, mean):
            inner = getattr(measurement[0] if isinstance(measurement, list) else measurement, "ContentSequence", [])
            assert not [i for i in inner if i.ConceptNameCodeSequence[0].CodeValue == "111001"]


def test_the_sr_is_highdicoms_own_document_element_for_element(tmp_path: Path, axial_series: Path,
                                                                seg_array: np.ndarray, labels: dict[int, str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """write_dicom_sr hands highdicom's constructor the report's root without its children and attaches them after
    (sr._document: the constructor's copies of the tree cost more than the rest of the SR); the file is the one
    highdicom's constructor makes of the whole report, every element the same but the times of creation."""
    from edgeseg.runtime.write import sr as sr_module

    vol = read_series(axial_series)
    options = OutputOptions(preview=False, seg_type="binary")
    (tmp_path / "fast").mkdir()
    (tmp_path / "slow").mkdir()
    fast = write_results(vol, seg_array, labels, options, MANIFEST, out_parent=tmp_path / "fast")
    used: list[int] = []

    def whole(*, evidence: list[Any], report: Any, **kwargs: Any) -> Any:
        used.append(len(report[0].ContentSequence))
        return hd.sr.Comprehensive3DSR(evidence=evidence, content=report, **kwargs)

    monkeypatch.setattr(sr_module, "_document", whole)
    slow = write_results(vol, seg_array, labels, options, MANIFEST, out_parent=tmp_path / "slow")
    assert used and used[0] > 2  # the observer context, the procedure and the measurements: the whole tree
    datasets = [pydicom.dcmread(r.files["dicom_sr"]) for r in (fast, slow)]
    for ds in datasets:
        for keyword in ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime"):
            ds.pop(keyword, None)
        for item in ds.get("ContributingEquipmentSequence", []):
            item.pop("ContributionDateTime", None)
    ours, highdicoms = datasets
    assert len(ours.ContentSequence) == used[0] and ours.ContentSequence[-1].ContentSequence  # the groups
    assert ours.SOPInstanceUID == highdicoms.SOPInstanceUID
    assert ours == highdicoms
    assert ours.file_meta == highdicoms.file_meta


def test_sr_needs_no_statistics_json(tmp_path: Path) -> None:
    """The volumes come from the same computation when statistics.json is not requested; no mean intensity for a
    modality without a coded quantity (here: OT)."""
    files = small_series(tmp_path / "s")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.Modality = "OT"
        ds.save_as(path)
    vol = read_series(tmp_path / "s")
    mask = np.zeros(vol.shape, np.uint8)
    mask[2:6, 2:5, 1:4] = 1
    result = write_results(vol, mask, {1: "kidney_left"}, OutputOptions(preview=False, statistics=False), MANIFEST)
    assert result.status == COMPLETE and "statistics.json" not in {p.name for p in result.output_dir.iterdir()}
    (group,) = hd.sr.srread(result.files["dicom_sr"]).content.get_volumetric_roi_measurement_groups()
    (measurement,) = group.get_measurements()
    voxel_ml = abs(np.linalg.det(vol.affine[:3, :3])) / 1000.0
    assert measurement.name == codes.SCT.Volume and measurement.value == pytest.approx(36 * voxel_ml)


def _write(series: Path, out: Path, manifest: dict[str, Any], seg_type: str = "labelmap") -> dict[str, Path]:
    vol = read_series(series)
    mask = np.zeros(vol.shape, np.uint8)
    mask[2:6, 2:5, 1:4] = 1
    mask[7:10, 5:8, 2:5] = 2
    out.mkdir(parents=True, exist_ok=True)
    result = write_results(vol, mask, {1: "liver", 2: "spleen"}, OutputOptions(preview=False, seg_type=seg_type),
                           manifest, out_parent=out)
    assert result.status == COMPLETE
    return result.files


def test_uids_are_the_same_for_a_rerun_and_differ_for_another_model(tmp_path: Path) -> None:
    small_series(tmp_path / "s")
    first = _write(tmp_path / "s", tmp_path / "a", MANIFEST)
    again = _write(tmp_path / "s", tmp_path / "b", json.loads(json.dumps(MANIFEST)))
    for role in ("dicom_seg", "dicom_sr"):
        assert _uids(first[role]) == _uids(again[role]), role
    seg_series, seg_sop = _uids(first["dicom_seg"])
    sr_series, sr_sop = _uids(first["dicom_sr"])
    assert len({seg_series, seg_sop, sr_series, sr_sop}) == 4  # the roles and the levels never share a UID
    sr = pydicom.dcmread(first["dicom_sr"])
    assert sr.CurrentRequestedProcedureEvidenceSequence  # the SR names the SEG it measures by that same UID
    assert seg_sop in {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                       for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}

    others = {
        "variant": {**MANIFEST, "run": {**MANIFEST["run"], "variant": "accurate"}},
        "precision": {**MANIFEST, "run": {**MANIFEST["run"], "parts": [{"name": "part0", "precision": "int8"}]}},
        "bundle": {**MANIFEST, "bundle": {**MANIFEST["bundle"], "bundle_json_sha256": "f" * 64}},
    }
    for what, manifest in others.items():
        other = _write(tmp_path / "s", tmp_path / what, manifest)
        for role in ("dicom_seg", "dicom_sr"):
            series_uid, sop_uid = _uids(other[role])
            assert series_uid != _uids(first[role])[0] and sop_uid != _uids(first[role])[1], (what, role)
    # another SEG type is another object: other UIDs for it and for the SR that measures it
    binary = _write(tmp_path / "s", tmp_path / "binary", MANIFEST, seg_type="binary")
    for role in ("dicom_seg", "dicom_sr"):
        assert _uids(binary[role])[1] != _uids(first[role])[1], role


def test_uids_differ_between_the_stacks_and_the_instances_of_a_series(tmp_path: Path) -> None:
    """The same SeriesInstanceUID with other instances (a stack of a split series, a re-sent series with one more
    slice) is another input."""
    small_series(tmp_path / "s")
    vol = read_series(tmp_path / "s")
    from edgeseg.runtime.write.dicomseg import model_identity, result_uids

    model = model_identity(MANIFEST["bundle"], MANIFEST["run"])
    base = result_uids(vol, model, "seg")
    assert result_uids(vol, model, "seg") == base
    assert result_uids(vol, model, "sr") != base
    assert result_uids(replace(vol, stack="echo2"), model, "seg") != base
    uids = tuple(vol.dicom.sop_instance_uids)
    assert result_uids(replace(vol, dicom=replace(vol.dicom, sop_instance_uids=uids[:-1])), model, "seg") != base
    shuffled = replace(vol, dicom=replace(vol.dicom, sop_instance_uids=uids[::-1]))
    assert result_uids(shuffled, model, "seg") == base  # sorted: the order the files were found in does not count


def test_an_sr_that_fails_makes_the_result_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(path: Path, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"half an SR")
        raise ValueError("highdicom refuses this content item")

    monkeypatch.setattr(results_module, "write_dicom_sr", boom)
    small_series(tmp_path / "s")
    vol = read_series(tmp_path / "s")
    result = write_results(vol, np.ones(vol.shape, np.uint8), {1: "spleen"}, OutputOptions(preview=False), {})
    assert result.status == PARTIAL
    assert result.missing_outputs == {"dicom_sr": "ValueError: highdicom refuses this content item"}
    names = {p.name for p in result.output_dir.iterdir()}
    assert "sr.dcm" not in names and "seg.dcm" in names  # the half-written SR is gone, the SEG is kept
    assert "dicom_sr" not in result.files and "dicom_sr" not in result.manifest["outputs"]
    assert any("DICOM SR not written" in w for w in result.manifest["warnings"])


def test_the_sr_is_missing_when_the_seg_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("source images have inconsistent geometry")

    monkeypatch.setattr(results_module, "write_dicom_seg", refuse)
    small_series(tmp_path / "s")
    vol = read_series(tmp_path / "s")
    result = write_results(vol, np.ones(vol.shape, np.uint8), {1: "spleen"}, OutputOptions(preview=False), {})
    assert result.status == PARTIAL
    assert result.missing_outputs == {
        "dicom_seg": "ValueError: source images have inconsistent geometry",
        "dicom_sr": "needs the DICOM-SEG, which was not written: ValueError: source images have inconsistent geometry",
    }
    assert not {"seg.dcm", "sr.dcm"} & {p.name for p in result.output_dir.iterdir()}


def test_no_sr_without_a_requested_seg_or_when_not_requested(tmp_path: Path, mr_path: Path) -> None:
    small_series(tmp_path / "s")
    vol = read_series(tmp_path / "s")
    mask = np.ones(vol.shape, np.uint8)
    for options in (OutputOptions(preview=False, dicom_seg=False), OutputOptions(preview=False, dicom_sr=False)):
        (out := tmp_path / f"seg_{options.dicom_seg}").mkdir()
        result = write_results(vol, mask, {1: "spleen"}, options, {}, out_parent=out)
        assert result.status == COMPLETE and "dicom_sr" not in result.files
        assert "sr.dcm" not in {p.name for p in result.output_dir.iterdir()}
    # an empty mask has no SEG and no SR, and is complete; NIfTI input has neither
    (tmp_path / "empty").mkdir()
    (tmp_path / "nifti").mkdir()
    empty = write_results(vol, np.zeros(vol.shape, np.uint8), {1: "spleen"}, OutputOptions(preview=False), {},
                          out_parent=tmp_path / "empty")
    assert empty.status == COMPLETE and not {"dicom_seg", "dicom_sr"} & set(empty.files)
    nifti = read_series(mr_path)
    result = write_results(nifti, np.ones(nifti.shape, np.uint8), {1: "spleen"}, OutputOptions(preview=False), {},
                           out_parent=tmp_path / "nifti")
    assert result.status == COMPLETE and "dicom_sr" not in result.files


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real OpenVINO bundle (threshold model: label 1 where the image is bright)."""
    from helpers.synthetic import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "b", patch=(8, 8, 8), spacing=(2.0, 2.0, 2.0),
                       threshold=500.0)


def test_segment_writes_the_sr_and_honours_no_dicom_sr(tmp_path: Path, bundle: Path) -> None:
    small_series(tmp_path / "exam")
    assert main(["-q", "segment", str(tmp_path / "exam"), "--bundle", str(bundle), "--no-cache"]) == 0
    (result,) = (tmp_path / "exam").glob("*.edgeseg")
    manifest = json.loads((result / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == COMPLETE and manifest["outputs"]["dicom_sr"] == "sr.dcm"
    statistics = json.loads((result / "statistics.json").read_text(encoding="utf-8"))["structures"]
    groups = hd.sr.srread(result / "sr.dcm").content.get_volumetric_roi_measurement_groups()
    assert {str(g.tracking_identifier): g.get_measurements(name=codes.SCT.Volume)[0].value for g in groups} == {
        name: pytest.approx(s["volume_ml"]) for name, s in statistics.items() if s["voxels"]}
    uids = {name: _uids(result / name) for name in ("seg.dcm", "sr.dcm")}

    # a re-run of the same series with the same bundle: the same UIDs (the result is replaced)
    assert main(["-q", "segment", str(tmp_path / "exam"), "--bundle", str(bundle), "--no-cache"]) == 0
    (result,) = (tmp_path / "exam").glob("*.edgeseg")
    assert {name: _uids(result / name) for name in ("seg.dcm", "sr.dcm")} == uids

    assert main(["-q", "segment", str(tmp_path / "exam"), "--bundle", str(bundle), "--no-cache",
                 "--no-dicom-sr"]) == 0
    (result,) = (tmp_path / "exam").glob("*.edgeseg")
    assert (result / "seg.dcm").is_file() and not (result / "sr.dcm").exists()
    manifest = json.loads((result / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == COMPLETE and "dicom_sr" not in manifest["outputs"]


def test_the_evidence_comes_from_the_uids_the_reader_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SR lists every source instance (and the SEG) from the UIDs the reader kept of each file: it reads the
    first source in full (patient and study) and the SEG's UIDs, not 300 headers again; without kept UIDs (a
    volume made otherwise) it reads them from the files, with the same evidence."""
    from edgeseg.runtime.write import write_dicom_seg, write_dicom_sr
    from edgeseg.runtime.write.statistics import compute_statistics

    small_series(tmp_path / "series", n=7)
    vol = read_series(tmp_path / "series")
    assert len(vol.dicom.file_uids) == len(vol.dicom_files) == 7
    labelmap = np.zeros(vol.shape, dtype=np.uint8)
    labelmap[2:8, 2:7, 1:6] = 1
    labels = {1: "liver"}
    segments = write_dicom_seg(tmp_path / "seg.dcm", vol, labelmap, labels)
    stats = compute_statistics(vol, labelmap, labels)
    read: list[str] = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda path, *a, **k: read.append(Path(path).name) or real(path, *a, **k))
    write_dicom_sr(tmp_path / "kept.dcm", vol, tmp_path / "seg.dcm", segments, stats)
    assert sorted(read) == sorted([vol.dicom_files[0].name, "seg.dcm"])
    read.clear()
    bare = replace(vol, dicom=replace(vol.dicom, file_uids=()))
    write_dicom_sr(tmp_path / "read.dcm", bare, tmp_path / "seg.dcm", segments, stats)
    assert len(read) == 8  # every source file and the SEG
    monkeypatch.setattr(pydicom, "dcmread", real)
    kept, again = hd.sr.srread(tmp_path / "kept.dcm"), hd.sr.srread(tmp_path / "read.dcm")
    assert kept.get_evidence() == again.get_evidence()
    assert {sop for _, _, sop, _ in kept.get_evidence()} == {
        str(pydicom.dcmread(tmp_path / "seg.dcm", stop_before_pixels=True).SOPInstanceUID),
        *map(str, vol.dicom.sop_instance_uids)}
