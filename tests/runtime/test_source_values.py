"""Source values never cost an output (issue 19): a series whose headers carry what real consoles and
de-identifiers write -- ``'***'`` in every date (UIH uMR 770 exports), PregnancyStatus 0 (not one of its defined
values), an empty ProcedureCodeSequence, an over-long de-identification code and method -- gets its SEG and SR,
both valid for dciodvfy (0 errors), with each value not copied as it was listed in the manifest's warnings by
attribute name and tag. The source files are never changed."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from edgeseg.cli import main
from helpers.seg_validation import dciodvfy_errors, sr_dciodvfy_errors

pytestmark = pytest.mark.slow

DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientBirthDate")


def _uih_style_series(real_mri: Path, folder: Path) -> list[Path]:
    from edgeseg.demo.dicom_series import write_dicom_series

    files = write_dicom_series(real_mri, folder, "t1 uih")
    for f in files:
        ds = pydicom.dcmread(f)
        for keyword in DATES:
            setattr(ds, keyword, "***")
        ds.PregnancyStatus = 0
        ds.ProcedureCodeSequence = Sequence([])
        ds.PatientIdentityRemoved = "YES"
        code = Dataset()
        code.CodeValue = "113100/113101/113105/113107"  # several codes in one SH of 16: 27 characters
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile with options"
        ds.DeidentificationMethodCodeSequence = Sequence([code])
        ds.DeidentificationMethod = "Basic Profile; Retain Longitudinal Temporal Information Modified Dates Option"
        ds.save_as(f, enforce_file_format=False)
    return files


def test_invalid_source_values_cost_no_seg_or_sr(tmp_path: Path, real_mri: Path, monkeypatch) -> None:
    for name in ("EDGESEG_BUNDLE", "HOLOSCAN_MODEL_PATH", "MONAI_MODELPATH"):
        monkeypatch.delenv(name, raising=False)
    files = _uih_style_series(real_mri, tmp_path / "in" / "series")
    before = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    out = tmp_path / "out"
    assert main(["-q", "run", "--input", str(tmp_path / "in"), "--output", str(out), "--bundle", "demo",
                 "--precision", "fp32", "--layout", "folders", "--no-preview"]) == 0
    (folder,) = [p for p in out.iterdir() if p.name.endswith(".edgeseg")]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and {"dicom_seg", "dicom_sr"} <= set(manifest["outputs"])
    warnings = "\n".join(manifest["warnings"])
    for attribute in ("StudyDate (0008,0020)", "PatientBirthDate (0010,0030)", "PregnancyStatus (0010,21C0)",
                      "ProcedureCodeSequence (0008,1032)", "DeidentificationMethod (0012,0063)",
                      "DeidentificationMethodCodeSequence[0].CodeValue (0008,0100)"):
        assert attribute in warnings, attribute
    assert "'***' is not a valid DA" in warnings and "0 is not one of its defined values" in warnings
    seg_errors, _ = dciodvfy_errors(folder / "seg.dcm")
    sr_errors, _ = sr_dciodvfy_errors(folder / "sr.dcm")
    assert seg_errors == [] and sr_errors == []
    seg = pydicom.dcmread(folder / "seg.dcm", stop_before_pixels=True)
    assert seg.StudyDate == "" and seg.PatientBirthDate == ""  # Type 2: present, empty (unknown)
    assert "PregnancyStatus" not in seg or seg.PregnancyStatus in (None, "")
    assert seg.DeidentificationMethodCodeSequence[0].LongCodeValue == "113100/113101/113105/113107"
    assert {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files} == before  # the sources are untouched
