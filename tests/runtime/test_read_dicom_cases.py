"""Real scanner DICOM in (issue 11, items 4, 5 and 7): exports the first reader refused, written as vendors write them
(``tests/helpers/dicom_cases.py`` says which header fields each case sets)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.dicom_cases import (multi_echo_enhanced, multi_echo_series, neutral_mosaic, rgb_image,
                                 siemens_mosaic, small_volume,
                                 uidless_series)
from edgeseg.cli import main
from edgeseg.demo.dicom_series import write_dicom_series, write_enhanced_mr
from edgeseg.errors import EXIT_OK, EXIT_PARTIAL, EXIT_SOME_FAILED, InvalidSeriesError
from edgeseg.runtime.naming import is_derived_series_id, safe_stem
from edgeseg.runtime.read import SkippedFiles, discover_series, read_series
from edgeseg.runtime.read.headers import COLOUR, MOSAIC, NO_FRAME_GEOMETRY, NOT_DICOM, no_geometry


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real OpenVINO bundle (threshold model: label 1 where the image is bright)."""
    from helpers.synthetic import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "b", patch=(8, 8, 8), spacing=(2.0, 2.0, 2.0),
                       threshold=500.0)


def _segment(folder: Path, bundle: Path, *flags: str) -> int:
    return main(["-q", "segment", str(folder), "--bundle", str(bundle), "--no-cache", "--no-preview", *flags])


# ------------------------------------------------------------------------------------------- item 4: empty UIDs


def test_a_series_with_empty_uids_is_one_series_with_a_derived_identity(tmp_path: Path) -> None:
    """Issue 11: such files were skipped with "no SeriesInstanceUID" and the folder ended in "No image series
    found". Now they group by folder, FrameOfReferenceUID, SeriesNumber/description, orientation and matrix."""
    uidless_series(tmp_path / "exam", 6, description="t1 deid/../x", series_number=3)
    (ref,) = discover_series(tmp_path / "exam")
    assert ref.uid is None and is_derived_series_id(ref.series_id) and len(ref.files) == 6
    assert ref.key == f"{tmp_path / 'exam'}::{ref.series_id}"
    assert ref.name == f"t1_deid_x_{ref.series_id[-8:]}" and ref.name == safe_stem(ref.name)  # a safe file name
    assert discover_series(tmp_path / "exam")[0].series_id == ref.series_id  # deterministic

    vol = read_series(ref)
    array, _ = small_volume(6)
    np.testing.assert_array_equal(vol.array, array)
    assert vol.series_uid is None and vol.series_id == ref.series_id and vol.name == ref.name
    assert vol.dicom.sop_instance_uids == ("",) * 6


def test_uidless_series_are_told_apart_by_their_headers_and_their_folder(tmp_path: Path) -> None:
    uidless_series(tmp_path / "exam", 5, description="t1", series_number=3, seed=1)
    uidless_series(tmp_path / "exam", 4, description="t2", series_number=4, seed=2)
    shutil.copytree(tmp_path / "exam", tmp_path / "copy")
    refs = discover_series(tmp_path)
    assert sorted((r.folder.name, r.description, len(r.files)) for r in refs) == [
        ("copy", "t1", 5), ("copy", "t2", 4), ("exam", "t1", 5), ("exam", "t2", 4)]
    assert len({r.key for r in refs}) == 4 and len({r.series_id for r in refs}) == 2
    for ref in refs:
        assert read_series(ref).shape[2] == len(ref.files)


def test_a_uidless_series_is_segmented_and_the_seg_skipped_with_its_reason(tmp_path: Path, bundle: Path,
                                                                           capsys: pytest.CaptureFixture[str]
                                                                           ) -> None:
    uidless_series(tmp_path / "exam", 6)
    assert _segment(tmp_path / "exam", bundle) == EXIT_PARTIAL
    assert "PARTIAL: DICOM-SEG (seg.dcm) not written: the source images have no SOPInstanceUID, " \
           "SeriesInstanceUID, StudyInstanceUID" in capsys.readouterr().out
    (result,) = (tmp_path / "exam").glob("*.edgeseg")
    manifest = json.loads((result / "manifest.json").read_text())
    assert manifest["status"] == "partial" and set(manifest["missing_outputs"]) == {"dicom_seg", "dicom_sr"}
    assert "de-identification" in manifest["missing_outputs"]["dicom_seg"]
    assert {"seg.nii.gz", "seg.labels.json", "statistics.json"} <= {p.name for p in result.iterdir()}
    assert not (result / "seg.dcm").exists()
    assert re.fullmatch(r".*::nouid-[0-9a-f]{16}", manifest["series_key"])
    # without a DICOM-SEG requested nothing is missing
    assert _segment(tmp_path / "exam", bundle, "--no-dicom-seg") == EXIT_OK


def test_a_seg_needs_every_uid(tmp_path: Path, bundle: Path) -> None:
    """Only the SOP Instance UIDs emptied: still no SEG (it references each source image)."""
    import pydicom

    files = write_dicom_series(small_volume(5), tmp_path / "exam")
    for path in files[:1]:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ""
        ds.save_as(path, enforce_file_format=False)
    assert _segment(tmp_path / "exam", bundle) == EXIT_PARTIAL
    (result,) = (tmp_path / "exam").glob("*.edgeseg")
    reason = json.loads((result / "manifest.json").read_text())["missing_outputs"]["dicom_seg"]
    assert reason.startswith("the source images have no SOPInstanceUID (")


# ------------------------------------------------------------------------------ item 7: refusals that say why


def test_a_siemens_mosaic_is_refused_as_a_mosaic(tmp_path: Path) -> None:
    """Issue 11: a mosaic was refused as "only one image slice" (one file) or "a cine series of a single slice"
    (several volumes at one position)."""
    files = siemens_mosaic(tmp_path / "dwi", volumes=3)
    skipped = SkippedFiles()
    assert discover_series(tmp_path / "dwi", skipped=skipped) == []
    assert skipped.refused == {MOSAIC: sorted(files)}
    for target in (tmp_path / "dwi", files[0]):
        with pytest.raises(InvalidSeriesError, match=r"Siemens mosaic \(EPI/DWI\) is not supported") as caught:
            read_series(target)
        assert "only one image slice" not in str(caught.value) and "cine" not in str(caught.value)


def test_no_image_series_found_names_the_reason_per_class_of_file(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """"No image series found in <folder>" hid the real reason in the debug log: now it lists each class of file
    skipped, with its count and one example file."""
    import pydicom

    exam = tmp_path / "exam"
    mosaics = neutral_mosaic(exam / "dwi", volumes=2)
    rgb = rgb_image(exam / "map")
    scout = write_dicom_series(small_volume(3), exam / "scout", "localizer",
                               image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    enhanced = write_enhanced_mr(small_volume(4), exam / "enh" / "IM1")
    ds = pydicom.dcmread(enhanced)
    del ds.PerFrameFunctionalGroupsSequence  # as an exporter that drops the functional groups
    ds.save_as(enhanced, enforce_file_format=True)
    (capture,) = write_dicom_series(small_volume(1), exam / "sc", "screen")
    ds = pydicom.dcmread(capture)
    del ds.ImagePositionPatient  # a secondary capture: no position in the patient
    ds.save_as(capture, enforce_file_format=True)
    (exam / "notes.txt").write_text("not an image")

    assert main(["segment", str(exam), "--bundle", "demo"]) == InvalidSeriesError.exit_code
    err = capsys.readouterr().err
    assert f"No image series found in {exam}: " in err
    for files, reason in [(mosaics, MOSAIC), ([rgb], COLOUR), ([enhanced], NO_FRAME_GEOMETRY),
                          ([capture], no_geometry("ImagePositionPatient")), ([exam / "notes.txt"], NOT_DICOM)]:
        assert f"{len(files)} file(s), e.g. {min(files)}: {reason}" in err, reason
    # the localizer is skipped by a selection rule, named with it
    assert "series localizer skipped by rule selection.exclude_image_types (ImageType LOCALIZER)" in err
    assert len(scout) == 3
    # the refused images are named in the normal log (a warning), not only in the debug log
    assert "WARNING" in err and "not segmented under" in err


def test_one_good_and_one_refused_series_exit_with_some_failed(tmp_path: Path, bundle: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's folder: one series segments, another is refused (a colour map); exit "some failed", not 6."""
    write_dicom_series(small_volume(6, seed=3), tmp_path / "exam", "t1 good")
    rgb = rgb_image(tmp_path / "exam")
    assert main(["segment", str(tmp_path / "exam"), "--bundle", str(bundle), "--no-cache", "--no-preview",
                 "--no-dicom-seg"]) == EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert len(list((tmp_path / "exam").glob("t1_good_*.edgeseg"))) == 1
    assert f"1 file(s), e.g. {rgb}: {COLOUR}" in err


# ------------------------------------------------------------------- item 5: several echoes in one series


def test_two_echoes_at_the_same_positions_are_two_stacks(tmp_path: Path) -> None:
    """Issue 11: a multi-echo series was refused as "duplicate positions"; dcm2niix splits it by echo, so do we."""
    files, arrays = multi_echo_series(tmp_path / "exam", 6)
    refs = discover_series(tmp_path / "exam")
    assert [r.stack.label for r in refs] == ["echo1", "echo2"] and all(r.stack.count == 2 for r in refs)
    uid = refs[0].uid
    assert [r.key for r in refs] == [f"{tmp_path / 'exam'}::{uid}#echo1", f"{tmp_path / 'exam'}::{uid}#echo2"]
    assert [r.name for r in refs] == [f"t1_fl2d_dixon_{uid[-8:]}_echo1", f"t1_fl2d_dixon_{uid[-8:]}_echo2"]
    assert [r.files for r in refs] == [tuple(sorted(files[:6])), tuple(sorted(files[6:]))]
    assert "EchoTime 3.69 ms" in refs[1].stack.description
    for ref, array in zip(refs, arrays):
        vol = read_series(ref)
        np.testing.assert_array_equal(vol.array, array)
        assert vol.name == ref.name and vol.stack == ref.stack.label and vol.dicom.stack["count"] == 2
        assert set(vol.dicom_files) == set(ref.files)
    assert [r.stack.label for r in discover_series(tmp_path / "exam", echoes="first")] == ["echo1"]
    with pytest.raises(InvalidSeriesError, match="holds 2 series"):
        read_series(tmp_path / "exam")  # a path is one series: choose the stack


def test_dixon_image_types_and_enhanced_frames_split_too(tmp_path: Path) -> None:
    """ImageType (Dixon in/opposed phase) names the stacks; an enhanced file is split per frame (MR Echo's
    EffectiveEchoTime), both stacks reading the same file."""
    multi_echo_series(tmp_path / "dixon", 4, image_types=[("ORIGINAL", "PRIMARY", "M", "DIXON", "OPP_PHASE"),
                                                           ("ORIGINAL", "PRIMARY", "M", "DIXON", "IN_PHASE")])
    assert [r.stack.label for r in discover_series(tmp_path / "dixon")] == ["echo1_OPP_PHASE", "echo2_IN_PHASE"]
    path, arrays = multi_echo_enhanced(tmp_path / "enh" / "IM0001", 5)
    refs = discover_series(tmp_path / "enh")
    assert [r.stack.label for r in refs] == ["echo1", "echo2"] and all(r.files == (path,) for r in refs)
    assert [r.geometry.shape for r in refs] == [(12, 10, 5)] * 2
    for ref, array in zip(refs, arrays):
        vol = read_series(ref)
        np.testing.assert_array_equal(vol.array, array)
        assert vol.dicom.excluded == {"other stack than " + ref.stack.label: 5}


def test_one_volume_whose_headers_vary_is_not_split(tmp_path: Path) -> None:
    """Only stacks that share slice positions are split: a volume whose EchoTime differs from slice to slice (no
    two at one position) stays one series."""
    import pydicom

    files = write_dicom_series(small_volume(6), tmp_path / "exam", "t2 haste")
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.EchoTime = 90 + k
        ds.save_as(path, enforce_file_format=True)
    (ref,) = discover_series(tmp_path / "exam")
    assert ref.stack is None and read_series(ref).shape == (12, 10, 6)


def test_segment_writes_one_result_per_echo_or_the_first(tmp_path: Path, bundle: Path) -> None:
    multi_echo_series(tmp_path / "exam", 6)
    from helpers.seg_validation import validate_result_folder

    assert _segment(tmp_path / "exam", bundle) == EXIT_OK  # with a DICOM-SEG per echo
    results = sorted(p.name for p in (tmp_path / "exam").glob("*.edgeseg"))
    assert [r.rsplit("_", 1)[1] for r in results] == ["echo1.edgeseg", "echo2.edgeseg"]
    for result in (tmp_path / "exam").glob("*.edgeseg"):
        manifest = json.loads((result / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["series"]["stack"]["label"] in result.name
        assert (result / "seg.dcm").is_file() and manifest["labels_present"]
        assert manifest["series_key"].endswith("#" + manifest["series"]["stack"]["label"])
        validate_result_folder(result)  # dciodvfy, dcmqi and highdicom agree with seg.nii.gz (before it is removed)
        shutil.rmtree(result)
    assert _segment(tmp_path / "exam", bundle, "--echoes", "first", "--no-dicom-seg") == EXIT_OK
    assert [p.name.rsplit("_", 1)[1] for p in (tmp_path / "exam").glob("*.edgeseg")] == ["echo1.edgeseg"]
