"""GE reverse-polarity EPI (``epi_pepolar``, SIGNA UHP) stores the reversed volumes' rows upside down; edgeseg
reverses them back as dcm2niix does (runtime/read/vendor.py names dcm2niix's source) or refuses the series with the
reason (issue 19: segmented upside down without a warning, image correlation 0.52 as read, 1.0 flipped).

The fixture is built as GE writes it, from the real MRI written as a classic MR series:

* Manufacturer "GE MEDICAL SYSTEMS", ManufacturerModelName "SIGNA UHP";
* private creator (0019,0010) "GEMS_ACQU_01" with (0019,109C) PulseSequenceName LO "research/ABCD/epi_pepolar",
  (0019,109E) InternalPulseSequenceName LO "EPI2" and (0019,10B3) user data 12 DS "1" (every volume reversed);
* ScanningSequence "EP", SequenceVariant "NONE", ScanOptions "EPI_GEMS", InPlanePhaseEncodingDirection "COL",
  TemporalPositionIdentifier 1, NumberOfTemporalPositions 1;
* the stored rows of every image reversed (the header's geometry unchanged).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.read import read_series
from edgeseg.runtime.read.vendor import reversed_rows


def _ge_fields(ds: pydicom.Dataset, mode: str | None = "1", sequence: str = "research/ABCD/epi_pepolar",
               manufacturer: str = "GE MEDICAL SYSTEMS", temporal_position: int | None = 1) -> None:
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "SIGNA UHP"
    block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block.add_new(0x9C, "LO", sequence)
    block.add_new(0x9E, "LO", "EPI2")
    if mode is not None:
        block.add_new(0xB3, "DS", mode)
    ds.ScanningSequence = "EP"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = "EPI_GEMS"
    ds.InPlanePhaseEncodingDirection = "COL"
    if temporal_position is not None:
        ds.TemporalPositionIdentifier = temporal_position
        ds.NumberOfTemporalPositions = 1


def _ge_series(real_mri: Path, folder: Path, reverse: bool = True, **fields) -> list[Path]:
    from edgeseg.demo.dicom_series import write_dicom_series

    files = write_dicom_series(real_mri, folder, "epi pepolar rev")
    for f in files:
        ds = pydicom.dcmread(f)
        _ge_fields(ds, **fields)
        if reverse:
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1, :]).tobytes()
        ds.save_as(f, enforce_file_format=False)
    return files


@pytest.fixture
def upright(tmp_path: Path, real_mri: Path) -> np.ndarray:
    from edgeseg.demo.dicom_series import write_dicom_series

    write_dicom_series(real_mri, tmp_path / "upright", "upright")
    return read_series(tmp_path / "upright").array


def test_a_reverse_polarity_series_is_read_upright(tmp_path: Path, real_mri: Path, upright: np.ndarray) -> None:
    _ge_series(real_mri, tmp_path / "ge")
    volume = read_series(tmp_path / "ge")
    assert np.array_equal(volume.array, upright)
    as_stored = np.asarray(volume.array)[:, ::-1, :]  # what edgeseg read before: upside down in the header's frame
    assert np.corrcoef(as_stored.ravel(), upright.ravel())[0, 1] < 0.9


def test_the_segmentation_of_a_reverse_polarity_series_is_upright(tmp_path: Path, real_mri: Path) -> None:
    from edgeseg.demo.dicom_series import write_dicom_series
    from edgeseg.runtime.options import SegmentOptions
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.demo import demo_bundle_path

    write_dicom_series(real_mri, tmp_path / "upright", "upright")
    _ge_series(real_mri, tmp_path / "ge")
    segmenter = Segmenter(demo_bundle_path(), SegmentOptions(precision="fp32"))
    ge, _ = segmenter.segment_volume(read_series(tmp_path / "ge"))
    reference, _ = segmenter.segment_volume(read_series(tmp_path / "upright"))
    assert ge.any() and np.array_equal(ge, reference)


def test_forward_polarity_and_other_vendors_are_left_as_stored(tmp_path: Path, real_mri: Path,
                                                               upright: np.ndarray) -> None:
    _ge_series(real_mri, tmp_path / "fwd", reverse=False, mode="0")
    assert np.array_equal(read_series(tmp_path / "fwd").array, upright)
    _ge_series(real_mri, tmp_path / "other", reverse=False, manufacturer="SIEMENS")
    assert np.array_equal(read_series(tmp_path / "other").array, upright)
    _ge_series(real_mri, tmp_path / "epi", reverse=False, sequence="epiRT")
    assert np.array_equal(read_series(tmp_path / "epi").array, upright)


@pytest.mark.parametrize("mode, position, expected", [
    ("1", 2, True), ("0", 1, False), ("2", 1, True), ("2", 2, False), ("3", 1, False), ("3", 2, True),
    ("2.0", 3, True), ("3", 0, False),
])
def test_which_volumes_are_reversed(mode: str, position: int, expected: bool) -> None:
    ds = pydicom.Dataset()
    _ge_fields(ds, mode=mode, temporal_position=position)
    assert reversed_rows(ds) is expected


def test_an_unknown_polarity_mode_is_refused_with_its_reason(tmp_path: Path, real_mri: Path) -> None:
    _ge_series(real_mri, tmp_path / "ge", mode="7")
    with pytest.raises(InvalidSeriesError, match=r"reverse-polarity EPI .* user data 12 \(0019,10B3\) '7'.*cannot "
                                                 r"tell whether its rows are stored reversed"):
        read_series(tmp_path / "ge")
    ds = pydicom.Dataset()
    _ge_fields(ds, mode="2", temporal_position=None)
    with pytest.raises(InvalidSeriesError, match="without TemporalPositionIdentifier"):
        reversed_rows(ds, "series x")
    shutil.rmtree(tmp_path / "ge")


def test_the_seg_overlays_the_stored_pixels_and_the_nifti_is_upright(tmp_path: Path, real_mri: Path) -> None:
    """Each SEG frame references a source instance and carries that instance's own position and orientation, so
    its rows are in the instance's *stored* order (reversed, like its pixels): read back with highdicom, every
    frame's mask lies on the anatomy as stored. The NIfTI mask stays on the corrected (upright) grid."""
    import highdicom as hd
    import nibabel as nib

    from edgeseg.demo import demo_bundle_path
    from edgeseg.demo.dicom_series import write_dicom_series
    from edgeseg.runtime.options import OutputOptions, SegmentOptions
    from edgeseg.runtime.segmenter import Segmenter

    write_dicom_series(real_mri, tmp_path / "upright", "upright")
    _ge_series(real_mri, tmp_path / "ge")
    segmenter = Segmenter(demo_bundle_path(), SegmentOptions(precision="fp32", outputs=OutputOptions(preview=False)))
    reference, _ = segmenter.segment_volume(read_series(tmp_path / "upright"))
    (tmp_path / "out").mkdir()
    result = segmenter.segment(tmp_path / "ge", out_parent=tmp_path / "out")
    volume = read_series(tmp_path / "ge")
    assert volume.dicom.rows_reversed and result.manifest["series"]["stored_rows_reversed"] is True

    # the NIfTI: upright, on the header's grid (the same mask as the upright series')
    nifti = nib.load(result.files["labelmap"])
    assert np.allclose(nifti.affine, volume.affine) and np.array_equal(np.asarray(nifti.dataobj), reference)

    seg = hd.seg.segread(result.files["dicom_seg"])
    segments = {int(n): s["label"] for n, s in result.manifest["dicom_seg_segments"].items()}
    to_label = np.zeros(max(segments) + 1, np.uint8)
    for number, label in segments.items():
        to_label[number] = label
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in volume.dicom_files}
    under_seg: dict[int, list[np.ndarray]] = {}
    under_upright_rows: dict[int, list[np.ndarray]] = {}
    for k, uid in enumerate(volume.dicom.sop_instance_uids):
        stored = pydicom.dcmread(by_uid[uid]).pixel_array.astype(np.float64)
        assert np.array_equal(stored[::-1, :], volume.array[:, :, k].T)  # stored upside down, read upright
        frame = to_label[seg.get_pixels_by_source_instance([uid], combine_segments=True)[0]]
        # exactly the upright mask with its rows back in the stored order
        assert np.array_equal(frame, reference[:, :, k].T[::-1, :]), k
        for label in np.unique(frame[frame > 0]):
            under_seg.setdefault(int(label), []).append(stored[frame == label])
            under_upright_rows.setdefault(int(label), []).append(stored[frame[::-1, :] == label])
    # each structure covers, in the stored pixels, the very anatomy the NIfTI mask covers in the upright volume
    # (the same intensities); the upright rows would cover something else
    moved = 0
    for label, values in under_seg.items():
        expected = np.sort(np.asarray(volume.array, np.float64)[reference == label])
        assert np.array_equal(np.sort(np.concatenate(values)), expected), label
        other = np.concatenate(under_upright_rows[label])
        moved += not np.isclose(other.mean(), expected.mean(), rtol=0.02)
    assert len(under_seg) >= 5 and moved >= len(under_seg) // 2

    # world geometry: each frame at its source instance's own position, with the sources' orientation
    sources = {uid: pydicom.dcmread(by_uid[uid], stop_before_pixels=True) for uid in by_uid}
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose([float(v) for v in orientation],
                       [float(v) for v in next(iter(sources.values())).ImageOrientationPatient])
    for item in seg.PerFrameFunctionalGroupsSequence:
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = item.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose([float(v) for v in position], [float(v) for v in sources[uid].ImagePositionPatient])
