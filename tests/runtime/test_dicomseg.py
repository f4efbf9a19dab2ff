"""DICOM-SEG: read back with highdicom, same voxels, same world positions, references to the sources."""
from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from io_helpers import geometry_variants, tree_digest
from edgeseg.demo.dicom_series import write_enhanced_mr
from edgeseg.runtime.read import read_series
from edgeseg.runtime.read.volume import Volume
from edgeseg.runtime.segment import OutputOptions
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
    result = write_results(vol, seg_array, labels, OutputOptions(preview=False, statistics=False), {})
    path = result.files["dicom_seg"]
    assert path == result.output_dir / "seg.dcm"
    assert tree_digest(axial_series, ignore=is_edgeseg_output) == before

    seg = hd.seg.segread(path)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert seg.SeriesDescription == "edgeseg segmentation"
    assert seg.Modality == "SEG"
    present = sorted(int(v) for v in np.unique(seg_array) if v > 0)
    assert seg.number_of_segments == len(present)
    desc = seg.get_segment_description(1)
    assert desc.algorithm_identification[0].AlgorithmName == "edgeseg"
    assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC

    # references: every source instance of the volume, and nothing else
    source_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in vol.dicom_files]
    assert list(vol.extra["sop_instance_uids"]) == source_uids
    referenced = {inst.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
                  for inst in series.ReferencedInstanceSequence}
    assert referenced == set(source_uids)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.series_uid

    per_frame = seg.get_pixels_by_source_instance(source_uids, combine_segments=True)
    segments = {int(k): v for k, v in result.manifest["dicom_seg_segments"].items()}
    np.testing.assert_array_equal(_to_volume_labels(seg, segments, per_frame), seg_array)


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


def test_labelmap_type(axial_series: Path, seg_array: np.ndarray, labels: dict[int, str], tmp_path: Path) -> None:
    vol = read_series(axial_series)
    segments = write_dicom_seg(tmp_path / "lm.dcm", vol, seg_array, labels, segmentation_type="LABELMAP")
    seg = hd.seg.segread(tmp_path / "lm.dcm")
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP
    per_frame = seg.get_pixels_by_source_instance(list(vol.extra["sop_instance_uids"]), combine_segments=True)
    np.testing.assert_array_equal(_to_volume_labels(seg, segments, per_frame), seg_array)


def test_enhanced_multiframe_source(mr_image: Image3, seg_array: np.ndarray, labels: dict[int, str],
                                    tmp_path: Path) -> None:
    arr, aff = geometry_variants(*mr_image)["oblique"]
    src = write_enhanced_mr((arr, aff), tmp_path / "enh" / "MF0001", frame_order="shuffled")
    vol = read_series(src)
    segments = write_dicom_seg(tmp_path / "seg.dcm", vol, seg_array, labels)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    frame_numbers = [idx + 1 for _, idx in vol.extra["frames"]]  # k order -> source frame numbers
    per_frame = seg.get_pixels_by_source_frame(vol.extra["sop_instance_uids"][0], frame_numbers,
                                               combine_segments=True)
    np.testing.assert_array_equal(_to_volume_labels(seg, segments, per_frame), seg_array)


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
    assert vol.extra["excluded"] == {"localizer": 1}
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
