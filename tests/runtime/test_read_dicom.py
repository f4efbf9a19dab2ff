"""DICOM reading: geometry round trips, console-export clutter, invalid stacks, enhanced multi-frame."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom import uid
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from io_helpers import GEOMETRIES, canonical, geometry_variants, tree_digest
from edgeseg.demo.dicom_series import write_dicom_series, write_enhanced_mr
from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.read import discover_series, read_dicom_header, read_series

Image = tuple[np.ndarray, np.ndarray]


def _save_plain(ds: Dataset, path: Path, sop_class: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def _by_position(folder: Path) -> list[Path]:
    """The series' files sorted along the slice normal (test helper, independent of the reader)."""
    files = [p for p in folder.iterdir() if p.is_file()]
    def key(p: Path) -> float:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        iop = np.array(ds.ImageOrientationPatient, float)
        return float(np.dot(np.cross(iop[:3], iop[3:]), np.array(ds.ImagePositionPatient, float)))
    return sorted(files, key=key)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_geometry_round_trip(geometry: str, mr_image: Image, dicom_series_dirs: dict[str, Path]) -> None:
    """World coordinates of every voxel centre and the voxel values survive NIfTI -> DICOM -> Volume."""
    arr, aff = geometry_variants(*mr_image)[geometry]
    vol = read_series(dicom_series_dirs[geometry])
    assert vol.kind == "dicom" and vol.array.dtype == np.float32
    assert sorted(vol.shape) == sorted(arr.shape)
    want_arr, want_aff = canonical(arr, aff)
    got_arr, got_aff = canonical(vol.array, vol.affine)
    np.testing.assert_allclose(got_aff, want_aff, atol=1e-4)
    np.testing.assert_array_equal(got_arr, want_arr)
    assert sorted(vol.spacing) == pytest.approx(sorted(np.sqrt((aff[:3, :3] ** 2).sum(0))), abs=1e-4)
    assert len(vol.dicom_files) == vol.shape[2]
    assert vol.source == dicom_series_dirs[geometry]


def test_voxel_array_layout_is_pixel_array_transposed(dicom_series_dirs: dict[str, Path]) -> None:
    """array[:, :, k] is pixel_array.T of the k-th file along the normal; dicom_files are in k order."""
    folder = dicom_series_dirs["oblique"]
    vol = read_series(folder)
    ordered = _by_position(folder)
    assert list(vol.dicom_files) == ordered
    for k in (0, 7, vol.shape[2] - 1):
        ds = pydicom.dcmread(ordered[k])
        expected = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(vol.array[:, :, k], expected)
    # voxel (i, j, k) lies where DICOM says: IPP + i * dc * row_cos + j * dr * col_cos (LPS)
    ds = pydicom.dcmread(ordered[5], stop_before_pixels=True)
    iop = np.array(ds.ImageOrientationPatient, float)
    dr, dc = (float(x) for x in ds.PixelSpacing)
    lps = np.array(ds.ImagePositionPatient, float) + 10 * dc * iop[:3] + 20 * dr * iop[3:]
    ras = vol.affine @ np.array([10, 20, 5, 1.0])
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)


def test_rescale_slope_intercept_applied(tmp_path: Path, mr_image: Image) -> None:
    arr, aff = mr_image
    values = arr.astype(np.float64) * 0.37 - 12.5
    write_dicom_series((values, aff), tmp_path / "s", rescale=(0.37 / 4, -12.5))
    vol = read_series(tmp_path / "s")
    np.testing.assert_allclose(canonical(vol.array, vol.affine)[0], canonical(values, aff)[0], atol=0.37 / 8 + 1e-4)
    ds = pydicom.dcmread(vol.dicom_files[0], stop_before_pixels=True)
    assert float(ds.RescaleSlope) == pytest.approx(0.37 / 4)


def test_two_series_interleaved_in_one_folder(tmp_path: Path, mr_image: Image) -> None:
    arr, aff = mr_image
    folder = tmp_path / "export"
    write_dicom_series((arr, aff), folder, "T1 axial", series_number=3)
    write_dicom_series(geometry_variants(arr, aff)["sagittal"], folder, "T1 sag", series_number=4)
    refs = discover_series(folder)
    assert [r.description for r in refs] == ["T1 axial", "T1 sag"]
    assert [len(r.files) for r in refs] == [arr.shape[2], arr.shape[0]]
    assert len({r.uid for r in refs}) == 2
    assert all(r.modality == "MR" and r.source == folder and r.kind == "dicom" for r in refs)
    assert refs[0].expected_instances == arr.shape[2]
    assert read_series(refs[0]).shape == arr.shape
    assert read_series(refs[1]).shape == (arr.shape[1], arr.shape[2], arr.shape[0])
    with pytest.raises(InvalidSeriesError, match=refs[0].uid):
        read_series(folder)  # two series: the caller must choose


def test_console_clutter_is_skipped(tmp_path: Path, mr_image: Image) -> None:
    """DICOMDIR, SR, KO, raw data, a zero-byte file, a text file, a hidden file and an image without pixel data."""
    folder = tmp_path / "export"
    files = write_dicom_series(mr_image, folder, "T1 axial")
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    for name, sop_class, modality in [("SR1", uid.BasicTextSRStorage, "SR"),
                                      ("KO1", uid.KeyObjectSelectionDocumentStorage, "KO"),
                                      ("RAW1", uid.RawDataStorage, "OT")]:
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, generate_uid(), modality
        ds.SeriesInstanceUID = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        _save_plain(ds, folder / name, sop_class)
    dicomdir = Dataset()
    dicomdir.FileSetID = "EXPORT"
    dicomdir.DirectoryRecordSequence = []
    _save_plain(dicomdir, folder / "DICOMDIR", uid.MediaStorageDirectoryStorage)
    (folder / "empty").write_bytes(b"")
    (folder / "README.txt").write_text("exported by the console\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")
    nopix = pydicom.dcmread(files[3])
    del nopix.PixelData
    nopix.SOPInstanceUID = generate_uid()
    nopix.save_as(folder / "nopixels", enforce_file_format=True)
    before = tree_digest(folder)

    assert read_dicom_header(folder / "README.txt") is None
    assert read_dicom_header(folder / "empty") is None
    assert read_dicom_header(files[0]).SeriesInstanceUID == series_uid
    refs = discover_series(folder)
    assert [r.uid for r in refs] == [series_uid]
    vol = read_series(folder)
    assert vol.shape == mr_image[0].shape
    assert vol.dicom.excluded == {"no pixel data": 1}
    assert tree_digest(folder) == before  # nothing was modified, moved or added


def _copy_series(src: Path, dst: Path) -> list[Path]:
    shutil.copytree(src, dst)
    return _by_position(dst)


def test_localizer_and_other_matrix_not_stacked(tmp_path: Path, mr_image: Image) -> None:
    folder = tmp_path / "s"
    files = write_dicom_series(mr_image, folder, "T1 axial")
    loc = pydicom.dcmread(files[4])
    loc.SOPInstanceUID = generate_uid()
    loc.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    loc.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    loc.save_as(folder / "zz_localizer", enforce_file_format=True)
    small = pydicom.dcmread(files[6])
    small.SOPInstanceUID = generate_uid()
    small.Rows, small.Columns = 32, 40
    small.PixelData = np.zeros((32, 40), np.int16).tobytes()
    small.ImagePositionPatient = [float(v) + 1.5 for v in small.ImagePositionPatient]
    small.save_as(folder / "aa_other_matrix", enforce_file_format=True)
    assert len(discover_series(folder)[0].files) == len(files) + 2
    vol = read_series(folder)
    assert vol.shape == mr_image[0].shape
    assert folder / "zz_localizer" not in vol.dicom_files and folder / "aa_other_matrix" not in vol.dicom_files
    assert vol.dicom.excluded["localizer"] == 1
    np.testing.assert_array_equal(canonical(vol.array, vol.affine)[0], canonical(*mr_image)[0])


def test_localizer_only_series_is_not_discovered(tmp_path: Path, mr_image: Image) -> None:
    arr, aff = mr_image
    write_dicom_series((arr[:, :, :3], aff), tmp_path, "localizer",
                       image_type=("ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"))
    assert discover_series(tmp_path) == []


def _uid(folder: Path) -> str:
    return str(discover_series(folder)[0].uid)


def test_missing_slice_names_the_series(tmp_path: Path, dicom_series_dirs: dict[str, Path]) -> None:
    files = _copy_series(dicom_series_dirs["axial"], tmp_path / "s")
    files[9].unlink()
    uid = _uid(tmp_path / "s")
    with pytest.raises(InvalidSeriesError, match=rf"{re.escape(uid)}.*1 slice\(s\) missing"):
        read_series(tmp_path / "s")


def test_uneven_spacing_is_rejected(tmp_path: Path, dicom_series_dirs: dict[str, Path]) -> None:
    files = _copy_series(dicom_series_dirs["axial"], tmp_path / "s")
    ds = pydicom.dcmread(files[10])
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + \
        [float(ds.ImagePositionPatient[2]) + 0.5]
    ds.save_as(files[10], enforce_file_format=True)
    with pytest.raises(InvalidSeriesError, match="uneven slice spacing"):
        read_series(tmp_path / "s")


def test_single_slice_is_rejected(tmp_path: Path, mr_image: Image) -> None:
    arr, aff = mr_image
    files = write_dicom_series((arr[:, :, 4:5], aff), tmp_path / "s")
    with pytest.raises(InvalidSeriesError, match="only one image slice"):
        read_series(tmp_path / "s")
    with pytest.raises(InvalidSeriesError, match="only one image slice"):
        read_series(files[0])  # a single DICOM file path


def test_duplicate_positions_are_rejected(tmp_path: Path, dicom_series_dirs: dict[str, Path]) -> None:
    files = _copy_series(dicom_series_dirs["axial"], tmp_path / "s")
    dup = pydicom.dcmread(files[3])
    dup.SOPInstanceUID = generate_uid()
    dup.AcquisitionNumber = 2  # a repeated acquisition whose headers do not tell it apart (another echo would be
    dup.save_as(tmp_path / "s" / "repeated", enforce_file_format=True)  # a stack of its own: test_read_dicom_cases)
    with pytest.raises(InvalidSeriesError, match="duplicate positions"):
        read_series(tmp_path / "s")


def test_all_slices_at_one_position_is_rejected(tmp_path: Path, mr_image: Image) -> None:
    arr, aff = mr_image
    files = write_dicom_series((arr[:, :, :6], aff), tmp_path / "cine")
    ipp = pydicom.dcmread(files[0], stop_before_pixels=True).ImagePositionPatient
    for f in files[1:]:
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = ipp
        ds.save_as(f, enforce_file_format=True)
    with pytest.raises(InvalidSeriesError, match="one position"):
        read_series(tmp_path / "cine")


def test_undecodable_pixel_data_names_the_series(tmp_path: Path, dicom_series_dirs: dict[str, Path]) -> None:
    files = _copy_series(dicom_series_dirs["axial"], tmp_path / "s")
    ds = pydicom.dcmread(files[2])
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data
    ds.save_as(files[2], enforce_file_format=True)
    uid = _uid(tmp_path / "s")
    with pytest.raises(InvalidSeriesError, match=re.escape(uid)):
        read_series(tmp_path / "s")


def test_dicom_name_is_safe(tmp_path: Path, mr_image: Image) -> None:
    arr, aff = mr_image
    write_dicom_series((arr[:, :, :3], aff), tmp_path / "s", series_description="../../etc/T1 w/ contrast: ax")
    vol = read_series(tmp_path / "s")
    digits = re.sub(r"\D", "", str(vol.series_uid))[-8:]
    assert vol.name == f"etc_T1_w_contrast_ax_{digits}"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", vol.name)


def test_enhanced_multiframe(tmp_path: Path, mr_image: Image) -> None:
    arr, aff = geometry_variants(*mr_image)["oblique"]
    values = arr.astype(np.float64) * 0.5 + 3.0
    path = write_enhanced_mr((values, aff), tmp_path / "enh" / "IMG0001", frame_order="shuffled",
                             rescale=(0.5, 3.0))
    before = tree_digest(tmp_path / "enh")
    refs = discover_series(tmp_path / "enh")
    assert len(refs) == 1 and refs[0].files == (path,)
    vol = read_series(path)
    assert vol.dicom_files == (path,)
    assert vol.dicom.multiframe
    frame_order = [idx for _, idx in vol.dicom.frames]
    assert sorted(frame_order) == list(range(arr.shape[2])) and frame_order != sorted(frame_order)
    want_arr, want_aff = canonical(values, aff)
    got_arr, got_aff = canonical(vol.array, vol.affine)
    np.testing.assert_allclose(got_aff, want_aff, atol=1e-4)
    np.testing.assert_allclose(got_arr, want_arr, atol=1e-4)
    assert tree_digest(tmp_path / "enh") == before


def test_nested_folders_and_our_outputs(tmp_path: Path, mr_image: Image) -> None:
    """Console exports nest series in sub-folders; results written beside a series are never discovered."""
    arr, aff = mr_image
    write_dicom_series((arr, aff), tmp_path / "DICOM" / "ST0" / "SE1", "T1")
    out = tmp_path / "DICOM" / "ST0" / "SE1" / "T1_12345678.edgeseg"
    write_dicom_series((arr, aff), out, "copy inside our output folder")
    refs = discover_series(tmp_path)
    assert [r.description for r in refs] == ["T1"]
    assert refs[0].source == tmp_path / "DICOM" / "ST0" / "SE1"
    assert discover_series(tmp_path, recursive=False) == []
    assert os.listdir(out)  # untouched


@pytest.mark.parametrize("threads,chunk,slices", [(1, 32, 5), (2, 4, 11), (3, 3, 9), (64, 32, 40)])
def test_slices_are_placed_transposed_whatever_the_threads_and_chunks(monkeypatch, threads, chunk, slices):
    """The reader's slice placer (decoded (rows, cols) slices in k order -> the (cols, rows, K) float32 volume, in
    chunks copied by threads over the first axis) gives exactly the slices' transposed stack, with the float64
    rescale of some slices cast to float32 as before, however the work is cut."""
    from edgeseg.runtime.read import _dicom

    monkeypatch.setattr(_dicom, "usable_cores", lambda: threads)
    monkeypatch.setattr(_dicom._SlicePlacer, "CHUNK", chunk)
    rng = np.random.default_rng(threads * 100 + slices)
    planes = [rng.integers(-2000, 4000, (7, 13)).astype(np.int16) for _ in range(slices)]
    values = [p.astype(np.float64) * 1.7 + 3.25 if k % 3 == 0 else p for k, p in enumerate(planes)]
    array = np.full((13, 7, slices), np.nan, dtype=np.float32)
    with _dicom._SlicePlacer(array) as placer:
        for v in values:
            placer.put(v)
    expected = np.stack([np.asarray(v, dtype=np.float32) for v in values]).transpose(2, 1, 0)
    assert array.tobytes() == np.ascontiguousarray(expected).tobytes()


def test_a_failed_read_places_nothing_half_read(monkeypatch):
    from edgeseg.runtime.read import _dicom

    array = np.zeros((4, 3, 2), np.float32)
    with pytest.raises(ValueError, match="bad slice"):
        with _dicom._SlicePlacer(array) as placer:
            placer.put(np.ones((3, 4)))
            raise ValueError("bad slice")
    assert not array.any()  # nothing half-placed was flushed after the error
