"""DICOM-SEG: read back with highdicom, same voxels, same world positions, references to the sources."""
from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from helpers.seg_validation import validate_result_folder, validate_seg
from io_helpers import geometry_variants, tree_digest
from edgeseg.demo.dicom_series import write_enhanced_mr
from edgeseg.runtime.read import read_series
from edgeseg.runtime.read.volume import Volume
from edgeseg.runtime.options import OutputOptions
from edgeseg.runtime.write import is_edgeseg_output, write_dicom_seg, write_results

Image3 = tuple[np.ndarray, np.ndarray]
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _to_volume_labels(seg: hd.seg.Segmentation, segments: dict[int, dict], per_frame: np.ndarray) -> np.ndarray:
    """(K, Rows, Columns) segment numbers -> (I, J, K) label values."""
    lut = np.zeros(max(segments) + 1, np.int64)
    for number, info in segments.items():
        lut[int(number)] = info["label"]
        assert seg.get_segment_description(int(number)).segment_label == info["name"]
    return lut[per_frame].transpose(2, 1, 0)


@pytest.fixture
def axial_series(tmp_path: Path, dicom_series_dirs: dict[str, Path]) -> Path:
    dst = tmp_path / "series"
    shutil.copytree(dicom_series_dirs["axial"], dst)
    return dst


def test_binary_seg_maps_to_the_same_voxels(axial_series: Path, seg_array: np.ndarray,
                                            labels: dict[int, str]) -> None:
    vol = read_series(axial_series)
    before = tree_digest(axial_series)
    result = write_results(vol, seg_array, labels,
                           OutputOptions(preview=False, statistics=False, seg_type="binary"), {})
    path = result.files["dicom_seg"]
    assert path == result.output_dir / "seg.dcm"
    assert tree_digest(axial_series, ignore=is_edgeseg_output) == before

    seg = hd.seg.segread(path)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert seg.SeriesDescription.startswith("SEG unknown bundle")  # no bundle record given here
    assert seg.Modality == "SEG"
    present = sorted(int(v) for v in np.unique(seg_array) if v > 0)
    assert seg.number_of_segments == len(present)
    desc = seg.get_segment_description(1)
    assert desc.algorithm_identification[0].AlgorithmName == "edgeseg"
    assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC

    # references: every source instance of the volume, and nothing else
    source_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in vol.dicom_files]
    assert list(vol.dicom.sop_instance_uids) == source_uids
    referenced = {inst.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
                  for inst in series.ReferencedInstanceSequence}
    assert referenced == set(source_uids)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.series_uid

    per_frame = seg.get_pixels_by_source_instance(source_uids, combine_segments=True)
    segments = {int(k): v for k, v in result.manifest["dicom_seg_segments"].items()}
    np.testing.assert_array_equal(_to_volume_labels(seg, segments, per_frame), seg_array)
    validate_result_folder(result.output_dir)


@pytest.mark.parametrize("geometry", ["sagittal", "oblique", "reversed_k"])
def test_seg_landmark_world_position(geometry: str, mr_image: Image3, tmp_path: Path,
                                     dicom_series_dirs: dict[str, Path]) -> None:
    """A single labelled voxel is at the same world point in the SEG (highdicom's volume geometry)."""
    arr, aff = geometry_variants(*mr_image)[geometry]
    vol = read_series(dicom_series_dirs[geometry])
    src_idx = (np.array(arr.shape) * [0.3, 0.6, 0.45]).astype(int)
    point = aff @ np.array([*src_idx, 1.0])
    idx = tuple(int(v) for v in np.round(np.linalg.solve(vol.affine, point)[:3]))
    lab = np.zeros(vol.shape, np.uint8)
    lab[idx] = 3
    lab[idx[0], idx[1], (idx[2] + 2) % vol.shape[2]] = 9  # a second segment, another plane
    segments = write_dicom_seg(tmp_path / "seg.dcm", vol, lab, {3: "kidney_left", 9: "adrenal_gland_left"})
    assert segments == {1: {"label": 3, "name": "kidney_left"}, 2: {"label": 9, "name": "adrenal_gland_left"}}
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    volume = seg.get_volume(combine_segments=True)
    found = np.argwhere(volume.array == 1)
    assert found.shape == (1, 3)
    world_lps = volume.affine @ np.array([*found[0], 1.0])
    np.testing.assert_allclose((_LPS @ world_lps)[:3], point[:3], atol=1e-3)
    validate_seg(tmp_path / "seg.dcm", lab, vol.affine, {1: 3, 2: 9})


def test_labelmap_type(axial_series: Path, seg_array: np.ndarray, labels: dict[int, str], tmp_path: Path) -> None:
    vol = read_series(axial_series)
    segments = write_dicom_seg(tmp_path / "lm.dcm", vol, seg_array, labels, segmentation_type="LABELMAP")
    seg = hd.seg.segread(tmp_path / "lm.dcm")
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP
    per_frame = seg.get_pixels_by_source_instance(list(vol.dicom.sop_instance_uids), combine_segments=True)
    np.testing.assert_array_equal(_to_volume_labels(seg, segments, per_frame), seg_array)
    assert int(seg.NumberOfFrames) == vol.shape[2]  # one frame per slice, whatever the number of segments
    validate_seg(tmp_path / "lm.dcm", seg_array, vol.affine, {n: s["label"] for n, s in segments.items()})


def test_enhanced_multiframe_source(mr_image: Image3, seg_array: np.ndarray, labels: dict[int, str],
                                    tmp_path: Path) -> None:
    arr, aff = geometry_variants(*mr_image)["oblique"]
    src = write_enhanced_mr((arr, aff), tmp_path / "enh" / "MF0001", frame_order="shuffled")
    vol = read_series(src)
    segments = write_dicom_seg(tmp_path / "seg.dcm", vol, seg_array, labels)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    frame_numbers = [idx + 1 for _, idx in vol.dicom.frames]  # k order -> source frame numbers
    per_frame = seg.get_pixels_by_source_frame(vol.dicom.sop_instance_uids[0], frame_numbers,
                                               combine_segments=True)
    np.testing.assert_array_equal(_to_volume_labels(seg, segments, per_frame), seg_array)
    validate_seg(tmp_path / "seg.dcm", seg_array, vol.affine, {n: s["label"] for n, s in segments.items()})


def test_no_seg_for_empty_mask_or_nifti(axial_series: Path, mr_path: Path, tmp_path: Path) -> None:
    vol = read_series(axial_series)
    empty = np.zeros(vol.shape, np.uint8)
    with pytest.raises(ValueError, match="empty"):
        write_dicom_seg(tmp_path / "x.dcm", vol, empty, {1: "spleen"})
    result = write_results(vol, empty, {1: "spleen"}, OutputOptions(preview=False), {})
    assert "dicom_seg" not in result.files and not (result.output_dir / "seg.dcm").exists()
    assert "no structure found: no DICOM-SEG written" in result.manifest["warnings"]

    nifti_vol = read_series(mr_path)
    with pytest.raises(ValueError, match="DICOM"):
        write_dicom_seg(tmp_path / "y.dcm", nifti_vol, np.ones(nifti_vol.shape, np.uint8), {1: "spleen"})


def test_seg_failure_keeps_other_results(axial_series: Path, seg_array: np.ndarray, labels: dict[int, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """highdicom refusing a source is recorded in the manifest; the NIfTI results are still published."""
    from edgeseg.runtime.write import results as results_module

    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("source images have inconsistent geometry")

    monkeypatch.setattr(results_module, "write_dicom_seg", refuse)
    vol: Volume = read_series(axial_series)
    result = write_results(vol, seg_array, labels, OutputOptions(preview=False), {})
    assert (result.output_dir / "seg.nii.gz").exists() and not (result.output_dir / "seg.dcm").exists()
    assert any("inconsistent geometry" in w for w in result.manifest["warnings"])


def test_enhanced_source_with_a_dropped_frame(mr_image: Image3, tmp_path: Path) -> None:
    """A localizer frame inside an enhanced image is not stacked; the SEG then carries explicit plane positions
    and still lands on the same world points."""
    from pydicom.dataset import Dataset

    arr, aff = geometry_variants(*mr_image)["oblique"]
    src = write_enhanced_mr((arr, aff), tmp_path / "enh" / "MF0001", frame_order="ordered")
    ds = pydicom.dcmread(src)
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    ds.PerFrameFunctionalGroupsSequence[0].MRImageFrameTypeSequence = [frame_type]  # the lowest slice
    ds.save_as(src, enforce_file_format=True)
    vol = read_series(src)
    assert vol.shape == (arr.shape[0], arr.shape[1], arr.shape[2] - 1)
    assert vol.dicom.excluded == {"localizer": 1}
    point = aff @ np.array([40, 50, 9, 1.0])
    idx = tuple(int(v) for v in np.round(np.linalg.solve(vol.affine, point)[:3]))
    lab = np.zeros(vol.shape, np.uint8)
    lab[idx] = 4
    write_dicom_seg(tmp_path / "seg.dcm", vol, lab, {4: "gallbladder"})
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    volume = seg.get_volume(combine_segments=True)
    found = np.argwhere(volume.array == 1)
    assert found.shape == (1, 3)
    np.testing.assert_allclose((_LPS @ volume.affine @ np.array([*found[0], 1.0]))[:3], point[:3], atol=1e-3)
    validate_seg(tmp_path / "seg.dcm", lab, vol.affine, {1: 4})


def test_segments_say_what_they_are(axial_series: Path, seg_array: np.ndarray, labels: dict[int, str]) -> None:
    """SNOMED CT category/type/laterality per structure, the preview's colours, and edgeseg + the bundle as
    contributing equipment (what PACS and viewers show)."""
    from edgeseg.runtime.write.preview import label_color
    from edgeseg.runtime.write.structure_codes import structure_code

    vol = read_series(axial_series)
    manifest = {"bundle": {"name": "total_mr_demo", "bundle_json_sha256": "ab" * 32}}
    result = write_results(vol, seg_array, labels, OutputOptions(preview=False, statistics=False), manifest)
    ds = pydicom.dcmread(result.files["dicom_seg"], stop_before_pixels=True)
    segments = {int(k): v for k, v in result.manifest["dicom_seg_segments"].items()}
    by_name = {}
    ours = [item for item in ds.SegmentSequence if int(item.SegmentNumber) > 0]  # LABELMAP: 0 is "Background"
    assert len(ours) == len(segments)
    for item in ours:
        info = segments[int(item.SegmentNumber)]
        by_name[info["name"]] = item
        code = structure_code(info["name"])
        category, prop = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "123037004")
        assert (prop.CodingSchemeDesignator, prop.CodeValue, prop.CodeMeaning) == code.type
        modifier = prop.get("SegmentedPropertyTypeModifierCodeSequence")
        assert (modifier[0].CodeValue if modifier else None) == (code.laterality[1] if code.laterality else None)
        expected = hd.color.CIELabColor.from_rgb(*label_color(info["label"])).value
        assert list(item.RecommendedDisplayCIELabValue) == list(expected)
    assert by_name["liver"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    kidney = by_name["kidney_left"].SegmentedPropertyTypeCodeSequence[0]
    assert kidney.CodeMeaning == "Kidney" and kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    assert len({tuple(item.RecommendedDisplayCIELabValue) for item in ours}) == len(segments)
    ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "edgeseg"]
    assert len(ours) == 1
    assert ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing Equipment
    assert "total_mr_demo" in ours[0].ManufacturerModelName and "ab" * 32 in ours[0].ContributionDescription


def test_every_total_mr_structure_has_codes_from_totalsegmentator(labels: dict[int, str]) -> None:
    """The table's codes are TotalSegmentator 2.18.0's SNOMED CT mapping (the facts) wherever it has the structure."""
    import csv

    import totalsegmentator

    from edgeseg.runtime.write.structure_codes import GENERIC, LEFT, RIGHT, STRUCTURE_CODES

    assert set(labels.values()) == set(STRUCTURE_CODES)
    table = Path(totalsegmentator.__file__).parent / "resources" / "totalsegmentator_snomed_mapping.csv"
    with open(table, newline="", encoding="utf-8") as fh:
        rows = {row["Structure"]: row for row in csv.DictReader(fh)}
    in_source = [name for name in STRUCTURE_CODES if name in rows]
    assert len(in_source) == 46, sorted(set(STRUCTURE_CODES) - set(rows))
    for name in in_source:
        row, code = rows[name], STRUCTURE_CODES[name]
        assert code.category[1] == row["SegmentedPropertyCategoryCodeSequence.CodeValue"], name
        assert code.type[:2] == ("SCT", row["SegmentedPropertyTypeCodeSequence.CodeValue"]), name
        side = row["SegmentedPropertyTypeModifierCodeSequence.CodeValue"] or None
        assert (code.laterality[1] if code.laterality else None) == side, name
    for name, code in STRUCTURE_CODES.items():
        assert code.laterality == (LEFT if name.endswith("_left") else RIGHT if name.endswith("_right") else None)
        assert code != GENERIC


def test_unknown_structure_gets_generic_codes(axial_series: Path, tmp_path: Path) -> None:
    vol = read_series(axial_series)
    lab = np.zeros(vol.shape, np.uint8)
    lab[30:40, 30:40, 5:8] = 7
    write_dicom_seg(tmp_path / "seg.dcm", vol, lab, {7: "tumour_core"})
    item = pydicom.dcmread(tmp_path / "seg.dcm", stop_before_pixels=True).SegmentSequence[0]
    assert item.SegmentLabel == "tumour_core"
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "123037004"
    validate_seg(tmp_path / "seg.dcm", lab, vol.affine, {1: 7})


def test_seg_type_option(axial_series: Path, seg_array: np.ndarray, labels: dict[int, str]) -> None:
    assert OutputOptions().seg_type == "binary"  # the default since issue 18: what every PACS takes
    assert OutputOptions(seg_type="BINARY").seg_type == "binary"
    with pytest.raises(ValueError, match="seg_type"):
        OutputOptions(seg_type="fractional")
    vol = read_series(axial_series)
    for seg_type, expected in (("labelmap", "LABELMAP"), ("binary", "BINARY")):
        result = write_results(vol, seg_array, labels, OutputOptions(preview=False, statistics=False,
                                                                     seg_type=seg_type), {})
        seg = hd.seg.segread(result.files["dicom_seg"])
        assert seg.segmentation_type.value == expected


def test_validation_catches_a_mask_one_voxel_off(axial_series: Path, seg_array: np.ndarray,
                                                 labels: dict[int, str], tmp_path: Path) -> None:
    """The validator itself: a label map shifted by one voxel (or a wrong affine) must fail."""
    vol = read_series(axial_series)
    segments = write_dicom_seg(tmp_path / "seg.dcm", vol, seg_array, labels, segmentation_type="LABELMAP")
    numbers = {n: s["label"] for n, s in segments.items()}
    with pytest.raises(AssertionError, match="world coordinates|voxel"):
        validate_seg(tmp_path / "seg.dcm", np.roll(seg_array, 1, axis=1), vol.affine, numbers)
    moved = vol.affine.copy()
    moved[:3, 3] += 0.5 * vol.affine[:3, 0]
    with pytest.raises(AssertionError, match="voxel"):
        validate_seg(tmp_path / "seg.dcm", seg_array, moved, numbers)


def test_seg_type_in_the_watch_config_and_on_the_command_line(axial_series: Path, tmp_path: Path) -> None:
    """outputs.seg_type (watch_config.yaml, EDGESEG_OUTPUTS__SEG_TYPE) and `edgeseg segment --seg-type`."""
    import subprocess
    import sys

    from edgeseg.errors import ConfigError
    from edgeseg.runtime.watch.config import load_config

    config = tmp_path / "watch_config.yaml"
    config.write_text("roots: [./incoming]\nbundle: demo\noutputs:\n  seg_type: binary\n", encoding="utf-8")
    assert load_config(config, env={}, check_paths=False).outputs.seg_type == "binary"
    assert load_config(config, env={"EDGESEG_OUTPUTS__SEG_TYPE": "LABELMAP"},
                       check_paths=False).outputs.seg_type == "labelmap"
    config.write_text("roots: [./incoming]\nbundle: demo\noutputs:\n  seg_type: fractional\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="outputs.seg_type"):
        load_config(config, env={}, check_paths=False)

    proc = subprocess.run([sys.executable, "-m", "edgeseg", "segment", str(axial_series), "--bundle", "demo",
                           "--seg-type", "binary", "--no-preview", "--no-statistics", "--no-cache"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = axial_series.glob("*.edgeseg")
    assert pydicom.dcmread(result / "seg.dcm", stop_before_pixels=True).SegmentationType == "BINARY"
    validate_result_folder(result)
