"""Refusals in the watcher name the real reason (issue 11, item 7): in the normal log and in the error file, in words a
PACS administrator can act on (fixtures: tests/helpers/dicom_cases.py)."""
from __future__ import annotations

import json
import logging

from watch_helpers import error_files, results, wait_for, write_series

from edgeseg.runtime.read.headers import COLOUR, MOSAIC


def test_a_mosaic_and_a_colour_image_get_error_files_with_their_reason(start_watcher, segmenter, roots, caplog
                                                                       ) -> None:
    from helpers.dicom_cases import neutral_mosaic, rgb_image

    caplog.set_level(logging.INFO, logger="edgeseg")
    w = start_watcher()
    mosaics = neutral_mosaic(roots / "exam" / "dwi", volumes=2)
    rgb = rgb_image(roots / "exam" / "map")
    write_series(roots / "exam" / "t1", 5)
    write_series(roots / "exam" / "scout", 3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    assert wait_for(lambda: len(error_files(roots)) == 2 and len(results(roots)) == 1)
    assert w.wait_idle(10)
    payloads = {p.parent.name: json.loads(p.read_text()) for p in error_files(roots)}
    assert payloads["dwi"]["kind"] == "invalid_series"
    assert f"2 file(s), e.g. {min(mosaics)}: {MOSAIC}" in payloads["dwi"]["error"]
    assert f"1 file(s), e.g. {rgb}: {COLOUR}" in payloads["map"]["error"]
    assert sum(segmenter.calls.values()) == 1  # only the T1 series reached the segmenter
    normal = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("series failed" in m and "Siemens mosaic (EPI/DWI) is not supported" in m for m in normal)
    # skipped by the selection rules (ImageType LOCALIZER): nothing to do, no error file
    assert any("series skipped" in m and "selection.exclude_image_types" in m and "LOCALIZER" in m for m in normal)


def test_the_default_rules_skip_a_study_s_non_anatomical_series(start_watcher, segmenter, roots, caplog) -> None:
    """Issue 20: DTI, BOLD, phase, B0 map, localizer and secondary capture series beside an anatomical T1 are
    skipped by rule (one log line each, counted as skipped, no error file, not failed); the T1 is segmented."""
    from helpers.series_cases import NON_ANATOMICAL, study

    caplog.set_level(logging.INFO, logger="edgeseg")
    w = start_watcher()
    study(roots / "exam")
    assert wait_for(lambda: len(results(roots)) == 1 and w.stats["skipped"] >= len(NON_ANATOMICAL))
    assert w.wait_idle(10)
    assert error_files(roots) == [] and w.stats["failed"] == 0
    assert sum(segmenter.calls.values()) == 1 and results(roots)[0].parent.name == "t1"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("series skipped")]
    assert len(lines) == len(NON_ANATOMICAL), lines  # one line per series, naming the rule
    for name, (_, rule) in NON_ANATOMICAL.items():
        assert sum(f"{roots / 'exam' / name}" in m and rule in m for m in lines) == 1, name
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # recorded in the job store as skipped (with the rule), not as jobs: skipped is not failed
    skipped = w.store.skipped()
    assert len(skipped) == len(NON_ANATOMICAL) and w.store.counts()["failed"] == 0
    assert {row.reason.split(":")[0] for row in skipped} == {rule for _, rule in NON_ANATOMICAL.values()}
    # logged once: a restart finds them again, and says nothing more at info level
    w.stop()
    caplog.clear()
    w2 = start_watcher()
    assert w2.wait_idle(10)
    assert w2.stats["skipped"] >= len(NON_ANATOMICAL)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.getMessage().startswith("series skipped")]
