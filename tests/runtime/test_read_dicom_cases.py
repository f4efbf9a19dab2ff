"""Real scanner DICOM in (issue 11, items 4, 5 and 7): exports the first reader refused, written as vendors write them
(``tests/helpers/dicom_cases.py`` says which header fields each case sets)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.dicom_cases import small_volume, uidless_series
from edgeseg.cli import main
from edgeseg.demo.dicom_series import write_dicom_series
from edgeseg.errors import EXIT_OK, EXIT_PARTIAL
from edgeseg.runtime.naming import is_derived_series_id, safe_stem
from edgeseg.runtime.read import discover_series, read_series


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
    assert vol.extra["sop_instance_uids"] == ("",) * 6


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
    assert manifest["status"] == "partial" and set(manifest["missing_outputs"]) == {"dicom_seg"}
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
