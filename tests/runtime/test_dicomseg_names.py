"""DICOM-SEG person names: what a console exports in PatientName must not stop the SEG (issue 9, low item).

A backslash is DICOM's value separator: pydicom reads ``DOE\\JOHN`` as two values, and highdicom refuses a
multi-valued PatientName (TypeError), so before the fix the SEG was silently missing (only a manifest warning).
"""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from io_helpers import tree_digest
from edgeseg.demo.dicom_series import write_dicom_series
from edgeseg.runtime.read import read_series
from edgeseg.runtime.options import OutputOptions
from edgeseg.runtime.write import is_edgeseg_output, write_results


def _series(tmp_path: Path, mr_image: tuple[np.ndarray, np.ndarray], **names: object) -> Path:
    arr, aff = mr_image
    folder = tmp_path / "series"
    for f in write_dicom_series((arr[:, :, :6], aff), folder, series_description="T1 names"):
        ds = pydicom.dcmread(f)
        for keyword, value in names.items():
            setattr(ds, keyword, value)
        ds.save_as(f)
    return folder


def _labels(shape: tuple[int, ...]) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[40:60, 30:50, 1:4] = 2
    return lab


def test_backslash_and_control_characters_in_person_names(tmp_path: Path, mr_image: tuple[np.ndarray, np.ndarray],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    folder = _series(tmp_path, mr_image, PatientName="DOE\\JOHN",
                     ReferringPhysicianName="WHO^DR\r\n\x1b[31mX", OtherPatientNames=["ALIAS^ONE", "ALIAS^TWO"])
    assert pydicom.dcmread(next(folder.iterdir())).PatientName == ["DOE", "JOHN"]  # two values as read
    vol = read_series(folder)
    before = tree_digest(folder)
    result = write_results(vol, _labels(vol.shape), {2: "liver"}, OutputOptions(preview=False, statistics=False), {})
    assert "dicom_seg" in result.files, result.manifest.get("warnings")
    assert tree_digest(folder, ignore=is_edgeseg_output) == before  # the sources are untouched

    seg = hd.seg.segread(result.files["dicom_seg"])
    assert seg.data_element("PatientName").VM == 1 and str(seg.PatientName) == "DOE JOHN"
    assert str(seg.ReferringPhysicianName) == "WHO^DR [31mX"
    assert [str(v) for v in seg.OtherPatientNames] == ["ALIAS^ONE", "ALIAS^TWO"]  # VM 1-n: values kept
    assert seg.PatientID == "EDGESEG-DEMO"
    assert "person name(s) PatientName, ReferringPhysicianName held a backslash" in caplog.text


def test_well_formed_names_are_copied_unchanged(tmp_path: Path, mr_image: tuple[np.ndarray, np.ndarray],
                                                caplog: pytest.LogCaptureFixture) -> None:
    folder = _series(tmp_path, mr_image, SpecificCharacterSet="ISO_IR 100", PatientName="MÜLLER^JÜRGEN^^DR",
                     ReferringPhysicianName="")
    vol = read_series(folder)
    result = write_results(vol, _labels(vol.shape), {2: "liver"}, OutputOptions(preview=False, statistics=False), {})
    seg = hd.seg.segread(result.files["dicom_seg"])
    assert str(seg.PatientName) == "MÜLLER^JÜRGEN^^DR"
    assert "person name" not in caplog.text
