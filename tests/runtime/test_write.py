"""Write stage: mask geometry and labels, statistics, preview, manifest, atomic publication, landmarks."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from io_helpers import GEOMETRIES, geometry_variants, tree_digest
from edgeseg.errors import InvalidSeriesError, OutputError
from edgeseg.runtime.read import read_series
from edgeseg.runtime.options import OutputOptions
from edgeseg.runtime.write import SegmentResult
from edgeseg.runtime.write import (ResultFolder, clear_error_file, is_edgeseg_output, read_label_map,
                                   write_error_file, write_results)
from edgeseg.runtime.write import results as results_module
from edgeseg.runtime.write.preview import render_preview

Image3 = tuple[np.ndarray, np.ndarray]
NO_EXTRAS = OutputOptions(per_structure=False, dicom_seg=False, statistics=False, preview=False)


@pytest.fixture
def nifti_copy(tmp_path: Path, mr_path: Path) -> Path:
    """The real MRI copied into a fresh folder (results are written beside it)."""
    dst = tmp_path / "case" / "example_mr_sm.nii.gz"
    dst.parent.mkdir()
    shutil.copy(mr_path, dst)
    return dst


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_write_results_for_nifti(nifti_copy: Path, seg_array: np.ndarray, labels: dict[int, str]) -> None:
    vol = read_series(nifti_copy)
    before = tree_digest(nifti_copy.parent)
    result = write_results(vol, seg_array, labels, OutputOptions(per_structure=True), {"bundle": "test", "n": 1})
    assert isinstance(result, SegmentResult)
    assert result.output_dir == nifti_copy.parent / "example_mr_sm.edgeseg"
    assert sorted(os.listdir(result.output_dir)) == ["manifest.json", "preview.png", "seg.labels.json", "seg.nii.gz",
                                                     "statistics.json", "structures"]
    assert set(result.files) == {"labelmap", "labels", "structures", "statistics", "preview", "manifest"}
    assert tree_digest(nifti_copy.parent, ignore=is_edgeseg_output) == before  # input untouched
    assert _partials(nifti_copy.parent) == []

    src = nib.load(str(nifti_copy))
    mask = nib.load(str(result.files["labelmap"]))
    assert mask.shape == src.shape and mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(mask.affine, src.affine)
    for code in ("qform_code", "sform_code"):
        assert int(mask.header[code]) == int(src.header[code])
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj), seg_array)
    assert read_label_map(result.files["labelmap"]) == labels
    assert json.loads(result.files["labels"].read_text()) == {str(k): v for k, v in labels.items()}

    structures = sorted(os.listdir(result.output_dir / "structures"))
    assert len(structures) == len(labels) and "liver.nii.gz" in structures
    liver = nib.load(str(result.output_dir / "structures" / "liver.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(liver.dataobj), (seg_array == 5).astype(np.uint8))
    assert read_label_map(result.output_dir / "structures" / "liver.nii.gz") == {1: "liver"}

    stats = json.loads(result.files["statistics"].read_text())["structures"]
    assert set(stats) == set(labels.values())
    liver_n = int((seg_array == 5).sum())
    assert stats["liver"]["voxels"] == liver_n
    assert stats["liver"]["volume_ml"] == pytest.approx(liver_n * 27 / 1000)
    assert stats["liver"]["mean_intensity"] == pytest.approx(float(vol.array[seg_array == 5].mean()), rel=1e-6)
    absent = next(v for k, v in labels.items() if not (seg_array == k).any())
    assert stats[absent] == {"label": next(k for k, v in labels.items() if v == absent), "voxels": 0,
                             "volume_ml": 0.0, "mean_intensity": None}

    with Image.open(result.files["preview"]) as png:
        assert png.mode == "RGB" and png.width > 500 and png.height > 200

    manifest = json.loads(result.files["manifest"].read_text())
    assert manifest["bundle"] == "test" and manifest["n"] == 1
    assert manifest["writer"]["name"] == "edgeseg" and manifest["written_utc"].endswith("+00:00")
    assert manifest["series"]["shape"] == [117, 91, 20]
    assert manifest["outputs"]["labelmap"] == "seg.nii.gz"
    assert "5" in manifest["labels_present"] and "dicom_seg" not in manifest["outputs"]
    assert result.manifest == manifest


def test_labels_above_255_use_uint16(tmp_path: Path, mr_image: Image3) -> None:
    arr, aff = mr_image
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(arr, aff), str(path))
    vol = read_series(path)
    lab = np.zeros(vol.shape, np.uint16)
    lab[10, 20, 5] = 300
    result = write_results(vol, lab, {300: "many_labels_model_structure", 1: "a"}, NO_EXTRAS, {})
    mask = nib.load(str(result.files["labelmap"]))
    assert mask.get_data_dtype() == np.uint16
    assert np.asanyarray(mask.dataobj)[10, 20, 5] == 300
    assert read_label_map(result.files["labelmap"])[300] == "many_labels_model_structure"


def test_wrong_grid_is_refused(nifti_copy: Path, labels: dict[int, str]) -> None:
    vol = read_series(nifti_copy)
    with pytest.raises(ValueError, match="shape"):
        write_results(vol, np.zeros((117, 91, 19), np.uint8), labels, NO_EXTRAS, {})
    with pytest.raises(ValueError, match="integer"):
        write_results(vol, np.zeros(vol.shape, np.float32), labels, NO_EXTRAS, {})
    assert sorted(os.listdir(nifti_copy.parent)) == ["example_mr_sm.nii.gz"]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_landmark_lands_at_the_same_world_position(geometry: str, mr_image: Image3, tmp_path: Path,
                                                   dicom_series_dirs: dict[str, Path]) -> None:
    """A single labelled voxel at a known world point is found at that point in the written mask."""
    arr, aff = geometry_variants(*mr_image)[geometry]
    series = tmp_path / "series"
    shutil.copytree(dicom_series_dirs[geometry], series)
    vol = read_series(series)
    # a world point: the centre of an off-centre voxel of this geometry's source grid
    src_idx = (np.array(arr.shape) * [0.55, 0.4, 0.3]).astype(int)
    point = aff @ np.array([*src_idx, 1.0])
    idx = np.linalg.solve(vol.affine, point)[:3]
    np.testing.assert_allclose(idx, np.round(idx), atol=1e-3)
    idx_i = tuple(int(v) for v in np.round(idx))
    lab = np.zeros(vol.shape, np.uint8)
    lab[idx_i] = 7
    result = write_results(vol, lab, {7: "pancreas"}, OutputOptions(statistics=False, preview=False,
                                                                     dicom_seg=False), {})
    mask = nib.load(str(result.files["labelmap"]))
    np.testing.assert_allclose(mask.affine, vol.affine, atol=1e-6)
    found = np.argwhere(np.asanyarray(mask.dataobj) == 7)
    assert found.shape == (1, 3)
    np.testing.assert_allclose((mask.affine @ np.array([*found[0], 1.0]))[:3], point[:3], atol=1e-3)
    assert int(mask.header["sform_code"]) == 1 and int(mask.header["qform_code"]) == 1


def test_failure_leaves_nothing_and_keeps_the_old_result(nifti_copy: Path, seg_array: np.ndarray,
                                                         labels: dict[int, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    vol = read_series(nifti_copy)
    folder = nifti_copy.parent
    first = write_results(vol, seg_array, labels, NO_EXTRAS, {"attempt": 1})
    old_files = tree_digest(first.output_dir)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("label sidecar writer crashed")

    # the label sidecar is part of every result (an optional output that fails only makes the result partial:
    # tests/runtime/test_partial_results.py)
    monkeypatch.setattr(results_module, "write_label_sidecar", boom)
    with pytest.raises(RuntimeError, match="crashed"):
        write_results(vol, seg_array, labels, NO_EXTRAS, {"attempt": 2})
    assert _partials(folder) == []
    assert tree_digest(first.output_dir) == old_files  # previous result unchanged

    shutil.rmtree(first.output_dir)
    with pytest.raises(RuntimeError):
        write_results(vol, seg_array, labels, NO_EXTRAS, {"attempt": 3})
    assert sorted(os.listdir(folder)) == ["example_mr_sm.nii.gz"]  # no <name>.edgeseg, no partial folder


def test_replacing_an_old_result(nifti_copy: Path, seg_array: np.ndarray, labels: dict[int, str]) -> None:
    vol = read_series(nifti_copy)
    write_results(vol, seg_array, labels, NO_EXTRAS, {"attempt": 1})
    write_error_file(nifti_copy.parent, vol.name, InvalidSeriesError("old failure"), "nothing")
    second = write_results(vol, np.zeros_like(seg_array), labels, NO_EXTRAS, {"attempt": 2})
    assert json.loads(second.files["manifest"].read_text())["attempt"] == 2
    assert not np.asanyarray(nib.load(str(second.files["labelmap"])).dataobj).any()
    assert sorted(os.listdir(nifti_copy.parent)) == ["example_mr_sm.edgeseg", "example_mr_sm.nii.gz"]


def test_error_file_round_trip(tmp_path: Path) -> None:
    path = write_error_file(tmp_path, "T1_12345678", InvalidSeriesError("Series 1.2.3: 1 slice(s) missing"),
                            "send the series again")
    assert path.name == "T1_12345678.edgeseg-error.json"
    record = json.loads(path.read_text())
    assert record["kind"] == "invalid_series" and "1.2.3" in record["error"]
    assert record["what_to_do"] == "send the series again"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert clear_error_file(tmp_path, "T1_12345678") and not path.exists()
    assert not clear_error_file(tmp_path, "T1_12345678")
    with pytest.raises(ValueError):
        write_error_file(tmp_path, "../evil", "x", "y")


def test_disk_full_becomes_output_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_rename = os.rename

    def full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    folder = ResultFolder(tmp_path, "T1_1")
    with pytest.raises(OutputError, match="full"):
        with folder:
            (folder.path / "seg.nii.gz").write_bytes(b"x")
            monkeypatch.setattr(os, "rename", full)
    monkeypatch.setattr(os, "rename", real_rename)
    assert os.listdir(tmp_path) == []

    with pytest.raises(OutputError, match="permission"):
        with ResultFolder(tmp_path, "T1_2") as f2:
            raise PermissionError(errno.EACCES, "Permission denied", str(f2.path / "x"))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_read_only_folder_gives_output_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="permission"):
            with ResultFolder(tmp_path, "T1_3"):
                pass
    finally:
        tmp_path.chmod(0o755)


@pytest.mark.parametrize("path, expected", [
    ("T1_123.edgeseg", True),
    ("/data/in/T1_123.edgeseg/seg.nii.gz", True),
    ("T1_123.edgeseg/structures/liver.nii.gz", True),
    ("T1_123.edgeseg-error.json", True),
    (".T1_123.edgeseg.partial-1a2b3c4d", True),
    (".T1_123.edgeseg.partial-1a2b3c4d/seg.nii.gz", True),
    (".T1_123.edgeseg.old-1a2b3c4d", True),
    (".T1_123.edgeseg-error.json.partial-99", True),
    ("/data/in/IM0001", False),
    ("/data/in/case.nii.gz", False),
    ("/data/edgeseg/study/IM1", False),
    ("notes.edgeseg.txt", False),
])
def test_is_edgeseg_output(path: str, expected: bool) -> None:
    assert is_edgeseg_output(path) is expected


def test_preview_is_fast_and_radiological(tmp_path: Path) -> None:
    """256x256x160 in well under a second; a label on the patient's right is drawn on the image's left."""
    import time

    from edgeseg.runtime.read.volume import Volume

    rng = np.random.default_rng(0)
    vol = Volume(array=rng.random((256, 256, 160), dtype=np.float32), affine=np.diag([-1.0, -1.0, 1.2, 1.0]),
                 source=tmp_path / "x.nii.gz", kind="nifti", name="x")
    lab = np.zeros(vol.shape, np.uint8)
    lab[:40, 100:150, 60:100] = 1  # i small = patient's right side (x = -i)
    start = time.perf_counter()
    img = render_preview(vol, lab, {1: "right_thing"})
    assert time.perf_counter() - start < 1.5
    rgb = np.asarray(img).astype(int)
    first_axial = rgb[20:270, 4:260]  # first panel
    coloured = np.argwhere(first_axial.max(axis=2) - first_axial.min(axis=2) > 30)
    assert coloured.size and coloured[:, 1].mean() < 128  # left half of the panel


def test_read_and_write_stages_import_light() -> None:
    """Importing the stages pulls in neither torch nor the DICOM/imaging libraries (they load on use)."""
    code = ("import sys, edgeseg.runtime.read, edgeseg.runtime.write; "
            "print(sorted(m for m in ('torch', 'onnx', 'nncf', 'highdicom', 'pydicom', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("slab_voxels", [1, 700, 10**9])
def test_mask_summary_is_one_pass_of_the_same_numbers(slab_voxels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one pass the writers share (slab by slab) gives numpy's own counts, sums, labels present and per-axis
    labelled voxels, whatever the slab size; the preview's slices come out as numpy's percentiles of the labelled
    voxels' positions, and its drawing does not depend on the slab size."""
    from edgeseg.runtime.read.volume import Volume
    from edgeseg.runtime.write import statistics as stats_module
    from edgeseg.runtime.write.statistics import summarize_mask

    monkeypatch.setattr(stats_module, "_SLAB_VOXELS", slab_voxels)
    rng = np.random.default_rng(3)
    lab = np.zeros((23, 17, 11), np.uint16)
    for value in (2, 5, 9, 300):
        c = rng.integers(0, lab.shape)
        lab[tuple(slice(max(0, ci - 4), ci + 3) for ci in c)] = value
    affine = np.array([[0.0, 0, -2.5, 10], [1.2, 0, 0, -4], [0, -0.8, 0, 7], [0, 0, 0, 1]])
    vol = Volume(array=rng.normal(size=lab.shape).astype(np.float32), affine=affine, source="x", kind="nifti",
                 name="x")
    summary = summarize_mask(vol, lab, {1: "one", 400: "far"})
    assert summary.counts.size == 401
    assert summary.present == [int(v) for v in np.unique(lab) if v > 0]
    np.testing.assert_array_equal(summary.counts[:301], np.bincount(lab.ravel(), minlength=301))
    assert summary.sums[0] == 0  # the background is counted, not summed
    for value in summary.present:
        np.testing.assert_allclose(summary.sums[value], vol.array[lab == value].astype(np.float64).sum(), rtol=1e-12)
    for axis, marginal in enumerate(summary.marginals):
        other = tuple(a for a in range(3) if a != axis)
        np.testing.assert_array_equal(marginal, np.count_nonzero(lab, axis=other))
    from edgeseg.runtime.write.preview import _percentiles

    np.testing.assert_allclose(_percentiles(summary.marginals[2], [0, 25, 50, 75, 100]),
                               np.percentile(np.nonzero(lab)[2], [0, 25, 50, 75, 100]), rtol=0, atol=1e-9)
    drawn = np.asarray(render_preview(vol, lab, {2: "a"}, summary=summary))
    monkeypatch.setattr(stats_module, "_SLAB_VOXELS", 10**9)
    assert (drawn == np.asarray(render_preview(vol, lab, {2: "a"}))).all()


def test_mask_summary_threads_give_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slabs run on the process's cores; their sums are added in slab order, so one thread or several give
    the same float64 bits (not merely close numbers), and every slab is counted once."""
    from edgeseg.runtime.read.volume import Volume
    from edgeseg.runtime.write import statistics as stats_module

    rng = np.random.default_rng(11)
    lab = rng.integers(0, 7, (41, 13, 9)).astype(np.uint8)
    vol = Volume(array=(rng.normal(size=lab.shape) * 1e3).astype(np.float32), affine=np.eye(4), source="x",
                 kind="nifti", name="x")
    monkeypatch.setattr(stats_module, "_SLAB_VOXELS", 13 * 9 * 2)  # 21 slabs of two planes
    got = {}
    for threads in (1, 2, 5):
        monkeypatch.setattr(stats_module, "usable_cores", lambda n=threads: n)
        got[threads] = stats_module.summarize_mask(vol, lab)
    for threads in (2, 5):
        assert got[threads].sums.tobytes() == got[1].sums.tobytes()
        np.testing.assert_array_equal(got[threads].counts, got[1].counts)
        for mine, one in zip(got[threads].marginals, got[1].marginals):
            np.testing.assert_array_equal(mine, one)
    np.testing.assert_array_equal(got[5].counts, np.bincount(lab.ravel()))
    np.testing.assert_array_equal(got[5].marginals[0], np.count_nonzero(lab, axis=(1, 2)))


def test_preview_window_samples_a_reoriented_view_as_its_c_order_copy_would() -> None:
    """The preview's grey window is the 1st/99th percentile of every n-th voxel in C order; on a flipped and
    transposed view it is gathered by index (no copy of the image) and gives exactly the copy's numbers."""
    from edgeseg.runtime.write.preview import _window

    image = np.random.default_rng(5).normal(size=(130, 120, 90)).astype(np.float32)
    view = image[::-1, :, ::-1].transpose(2, 0, 1)
    assert not view.flags.c_contiguous
    flat = np.ascontiguousarray(view).ravel()
    step = max(1, flat.size // 1_000_000)
    expected = tuple(float(v) for v in np.percentile(flat[::step], [1.0, 99.0]))
    assert _window(view) == expected
    assert _window(np.ascontiguousarray(view)) == expected


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 130, 7), (129, 65, 3), (70, 70, 70)])
def test_reversed_axes_is_numpys_transposed_copy(shape: tuple[int, int, int]) -> None:
    """The blocked copy the writers use holds exactly ``ascontiguousarray(a.transpose(2, 1, 0))``, C-contiguous,
    for shapes smaller and larger than a block and not multiples of it."""
    from edgeseg.runtime.arrays import reversed_axes

    a = np.random.default_rng(sum(shape)).integers(0, 255, shape).astype(np.uint8)
    got = reversed_axes(a)
    assert got.flags.c_contiguous and got.shape == shape[::-1]
    np.testing.assert_array_equal(got, np.ascontiguousarray(a.transpose(2, 1, 0)))
    with pytest.raises(ValueError, match="3-D"):
        reversed_axes(a[0])


def test_labelmap_nifti_holds_what_nibabel_would_have_written(tmp_path: Path) -> None:
    """The label map packed through ISA-L from a Fortran-ordered copy unpacks (with the standard library's gzip) to
    exactly the bytes ``nib.save`` writes for the same image."""
    import gzip

    import nibabel as nib

    from edgeseg.runtime.read.volume import Volume
    from edgeseg.runtime.write.nifti import _nifti, write_labelmap

    lab = np.random.default_rng(8).integers(0, 7, (37, 29, 11)).astype(np.uint8)
    affine = np.array([[0.0, 0, -2.5, 10], [1.2, 0, 0, -4], [0, -0.8, 0, 7], [0, 0, 0, 1]])
    vol = Volume(array=np.zeros(lab.shape, np.float32), affine=affine, source="x", kind="nifti", name="x")
    labels = {i: f"l{i}" for i in range(1, 7)}
    write_labelmap(tmp_path / "new.nii.gz", lab, vol, labels)
    nib.save(_nifti(lab, vol, labels), str(tmp_path / "nibabel.nii.gz"))
    with gzip.open(tmp_path / "new.nii.gz") as a, gzip.open(tmp_path / "nibabel.nii.gz") as b:
        assert a.read() == b.read()
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "new.nii.gz").dataobj), lab)


@pytest.mark.parametrize("dtype", [np.float32, np.uint64])
def test_mask_summary_refuses_a_mask_it_would_have_to_truncate(dtype: type) -> None:
    """A float (or uint64) label map is refused as numpy's bincount refuses it, never cast to labels."""
    from edgeseg.runtime.read.volume import Volume
    from edgeseg.runtime.write.statistics import summarize_mask

    lab = np.full((4, 3, 2), 1.7 if dtype is np.float32 else 1, dtype=dtype)
    vol = Volume(array=np.zeros(lab.shape, np.float32), affine=np.eye(4), source="x", kind="nifti", name="x")
    with pytest.raises(TypeError):
        summarize_mask(vol, lab)
