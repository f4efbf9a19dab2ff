"""Series selection (issue 20): DTI, BOLD, phase, B0 map, localizer and secondary capture series are skipped by the
default rules, one log line each and no error; the anatomical series beside them is segmented
(fixtures: tests/helpers/series_cases.py)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers.dicom_cases import multi_echo_series
from helpers.series_cases import NON_ANATOMICAL, anatomical, ge_bold, study

from edgeseg.runtime.read import SkippedFiles, discover_series, series_to_segment
from edgeseg.runtime.read.selection import SEGMENT_ALL, SelectionRules


def _rule_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "series skipped by rule" in r.getMessage()]


def test_default_rules_skip_every_non_anatomical_series_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    written = study(tmp_path / "exam")
    caplog.set_level(logging.INFO, logger="edgeseg")
    skipped = SkippedFiles()
    refs, refused = series_to_segment(tmp_path / "exam", skipped=skipped)
    assert [r.folder.name for r in refs] == ["t1"] and refused == []
    assert refs[0].files == tuple(sorted(written["t1"]))
    by_folder = {s.files[0].parent.name: s for s in skipped.by_rule}
    assert {name: s.rule for name, s in by_folder.items()} == {name: rule for name, (_, rule) in
                                                               NON_ANATOMICAL.items()}
    assert "DIFFUSION" in by_folder["dti"].reason  # the b-value: Canon's ImageType says M
    assert by_folder["dti"].files == tuple(sorted(written["dti"]))  # all 13 volumes, one skip
    lines = _rule_lines(caplog)
    assert len(lines) == len(NON_ANATOMICAL)  # one line per series
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # not errors, nothing to act on
    # without selection the old behaviour: the DTI's 13 volumes and the BOLD's 10 would each be a series
    assert len(discover_series(tmp_path / "exam" / "dti")) == 13
    assert len(discover_series(tmp_path / "exam", selection=SEGMENT_ALL)) > 20


def test_each_rule_can_be_changed(tmp_path: Path) -> None:
    ge_bold(tmp_path / "bold")
    anatomical(tmp_path / "t1", n=4)
    keep_bold = SelectionRules(exclude_descriptions=(), max_volumes=20)
    assert len(series_to_segment(tmp_path, selection=keep_bold)[0]) == 1 + 10
    no_time_series = SelectionRules(exclude_descriptions=())
    skipped = SkippedFiles()
    refs, _ = series_to_segment(tmp_path, selection=no_time_series, skipped=skipped)
    assert [r.folder.name for r in refs] == ["t1"] and [s.rule for s in skipped.by_rule] == ["selection.max_volumes"]
    skipped = SkippedFiles()
    refs, _ = series_to_segment(tmp_path, selection=SelectionRules(min_slices=5), skipped=skipped)
    assert refs == []
    assert {s.rule for s in skipped.by_rule} == {"selection.min_slices", "selection.exclude_descriptions"}
    only = SelectionRules(include_descriptions=("t1*",))
    assert [r.folder.name for r in series_to_segment(tmp_path, selection=only)[0]] == ["t1"]
    assert series_to_segment(tmp_path, selection=SelectionRules(modalities=("CT",)))[0] == []


def test_a_phase_stack_of_a_magnitude_phase_series_is_skipped(tmp_path: Path) -> None:
    """One series holding magnitude and phase at the same positions: the magnitude stack is segmented."""
    multi_echo_series(tmp_path / "gre", image_types=[("ORIGINAL", "PRIMARY", "M", "ND"),
                                                     ("ORIGINAL", "PRIMARY", "P", "ND")])
    skipped = SkippedFiles()
    refs, _ = series_to_segment(tmp_path, skipped=skipped)
    assert len(refs) == 1 and refs[0].stack is not None and "M" in refs[0].stack.key[2].split("\\")
    assert [s.rule for s in skipped.by_rule] == ["selection.exclude_image_types"]
    assert len(series_to_segment(tmp_path, selection=SEGMENT_ALL)[0]) == 2


def test_magnitude_and_first_pick_stacks(tmp_path: Path) -> None:
    multi_echo_series(tmp_path / "dixon", image_types=[("DERIVED", "PRIMARY", "DIXON", "IN_PHASE", "M"),
                                                       ("DERIVED", "PRIMARY", "DIXON", "OPP_PHASE")])
    assert len(series_to_segment(tmp_path)[0]) == 2
    assert [r.stack.index for r in series_to_segment(tmp_path, echoes="first")[0]] == [0]
    magnitude = series_to_segment(tmp_path, echoes="magnitude")[0]
    assert len(magnitude) == 1 and "M" in magnitude[0].stack.key[2].split("\\")


def test_a_folder_with_only_skipped_series_is_not_an_error(tmp_path: Path) -> None:
    ge_bold(tmp_path / "bold")
    skipped = SkippedFiles()
    assert series_to_segment(tmp_path, skipped=skipped) == ([], [])
    assert len(skipped.by_rule) == 1


def test_edgeseg_segment_on_a_study_segments_the_anatomical_series_only(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The real command and a real (tiny OpenVINO) bundle: exit 0, one result (beside the T1) with its DICOM-SEG
    and SR; the six other series skipped, one line each, no error file and nothing written beside them."""
    from helpers.synthetic import make_bundle

    from edgeseg.cli import main
    from edgeseg.errors import EXIT_OK

    bundle = make_bundle(tmp_path / "bundle", patch=(8, 8, 8), spacing=(2.0, 2.0, 2.0), threshold=500.0)
    study(tmp_path / "exam")
    # precision fp32: the synthetic bundle has no fidelity verdicts, and auto's once-per-bundle WARNING about that
    # (tests/oneshot/test_provenance.py) is not what this test is about
    assert main(["segment", str(tmp_path / "exam"), "--bundle", str(bundle), "--no-cache", "--no-preview",
                 "--precision", "fp32"]) == EXIT_OK
    written = sorted(p.relative_to(tmp_path / "exam") for p in (tmp_path / "exam").rglob("*.edgeseg*"))
    assert len(written) == 1 and written[0].parts[0] == "t1"
    assert {"seg.dcm", "sr.dcm"} <= {p.name for p in (tmp_path / "exam" / written[0]).iterdir()}
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "series skipped by rule" in line]
    assert len(lines) == len(NON_ANATOMICAL) and all(" INFO " in line for line in lines), lines
    assert " WARNING " not in err and " ERROR " not in err
