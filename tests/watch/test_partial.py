"""A partial result in the watcher (issue 11, item 6): the series is recorded as ``partial``, not done; its error file
names the missing output; ``edgeseg status`` shows it; it is not repeated until its files change. And the job store
of schema version 1 (before the ``partial`` state) is migrated with its rows."""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from watch_helpers import QUIET, CountingSegmenter, copy_slowly, error_files, results, wait_for, write_series

from edgeseg.cli import main
from edgeseg.errors import EXIT_PARTIAL
from edgeseg.runtime.naming import is_derived_series_id
from edgeseg.runtime.watch.store import DONE, PARTIAL, SCHEMA_VERSION, JobStore

MISSING = {"dicom_seg": "ValueError: highdicom refuses this source"}


class PartialSegmenter(CountingSegmenter):
    """The fake segmenter, whose results lack the DICOM-SEG (as the writer reports one highdicom refused)."""

    def _segment(self, source: Any, *args: Any) -> Any:
        result = super()._segment(source, *args)
        manifest = dict(result.manifest, status="partial", missing_outputs=MISSING)
        return dataclasses.replace(result, manifest=manifest)


def test_a_partial_result_is_recorded_as_partial_with_an_error_file(start_watcher, roots, tmp_path) -> None:
    segmenter = PartialSegmenter()
    w = start_watcher(segmenter)
    copy_slowly(write_series(tmp_path / "src", 5), roots / "exam", delay_s=0.02)
    assert wait_for(lambda: len(results(roots)) == 1 and len(error_files(roots)) == 1)
    assert w.wait_idle(10)
    (key,) = segmenter.calls
    row = w.store.get(key)
    assert row.state == PARTIAL and row.state != DONE and row.error_kind == "partial"
    assert "DICOM-SEG (seg.dcm) not written: ValueError: highdicom refuses this source" in row.last_error
    assert row.output_path == str(results(roots)[0])
    (error_file,) = error_files(roots)
    payload = json.loads(error_file.read_text())
    assert payload["kind"] == "partial" and "DICOM-SEG (seg.dcm) not written" in payload["error"]
    assert error_file.name == f"{row.name}.edgeseg-error.json" and "tries again when the files change" in \
        payload["what_to_do"]
    assert w.stats["partial"] == 1 and w.stats["done"] == 0
    assert w.history[-1].partial and w.history[-1].error == row.last_error

    w.tracker.scan(roots)  # seen again, unchanged: not repeated
    time.sleep(3 * QUIET)
    assert w.wait_idle(10) and segmenter.calls[key] == 1


def test_watch_once_exits_with_the_partial_code_and_status_shows_it(make_config, roots, tmp_path, capsys) -> None:
    from edgeseg.runtime.watch.service import Watcher

    write_series(roots / "exam", 4, description="abdomen t1")
    w = Watcher(make_config(), PartialSegmenter(), once=True, settle_s=0.1)
    assert w.run() == EXIT_PARTIAL
    assert len(error_files(roots)) == 1 and len(results(roots)) == 1
    config_file = tmp_path / "watch_config.yaml"
    config_file.write_text(f"roots: [{roots}]\nstate_dir: {w.config.state_dir}\n")
    capsys.readouterr()
    assert main(["-q", "status", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "1 partial" in out and "0 done" in out
    (row,) = [line for line in out.split("Recent")[1].splitlines() if "abdomen_t1" in line]
    assert " partial " in row and "DICOM-SEG (seg.dcm) not written" in row


def test_a_complete_result_after_a_partial_one_clears_the_error_file(start_watcher, segmenter, roots,
                                                                     tmp_path) -> None:
    partial = PartialSegmenter()
    w = start_watcher(partial)
    files = copy_slowly(write_series(tmp_path / "src", 5), roots / "exam", delay_s=0.01)
    assert wait_for(lambda: len(error_files(roots)) == 1)
    assert w.wait_idle(10)
    w.stop()
    w2 = start_watcher(segmenter)
    files[0].touch()  # the series changed: segmented again, completely this time
    w2.tracker.touch(files[0])
    assert wait_for(lambda: sum(segmenter.calls.values()) == 1 and not error_files(roots))
    assert w2.wait_idle(10)
    (key,) = segmenter.calls
    assert w2.store.get(key).state == DONE


@pytest.mark.slow
def test_a_uidless_series_is_segmented_by_the_real_segmenter_and_recorded_partial(make_config, roots,
                                                                                  tmp_path) -> None:
    """Issue 11, items 4 and 6 in the watcher: a de-identified series with empty UIDs (tests/helpers/dicom_cases.py)
    is one series (folder + derived identity), segmented by the real segmenter; its DICOM-SEG cannot reference
    sources without UIDs, so the row is partial and the error file beside the results says why."""
    from helpers.dicom_cases import uidless_series
    from helpers.synthetic import make_bundle

    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.runtime.watch.service import Watcher

    bundle = make_bundle(tmp_path / "bundle_real", patch=(8, 8, 8), spacing=(2.0, 2.0, 2.0), threshold=500.0)
    w = Watcher(make_config(bundle=str(bundle), max_attempts=1), settle_s=0.1)
    w.start()
    try:
        assert isinstance(w.segmenter, Segmenter)
        copy_slowly(uidless_series(tmp_path / "src", 6), roots / "deid", delay_s=0.02)
        assert wait_for(lambda: len(results(roots)) == 1 and len(error_files(roots)) == 1, timeout=60)
        assert w.wait_idle(10)
        (row,) = w.store.rows()
        assert row.state == PARTIAL and row.series_uid is None
        assert is_derived_series_id(row.key.rsplit("::", 1)[1]) and row.n_files == 6
        (result,) = results(roots)
        assert result.name == f"{row.name}.edgeseg" and (result / "seg.nii.gz").is_file()
        payload = json.loads(error_files(roots)[0].read_text())
        assert payload["kind"] == "partial" and payload["series"] == row.name
        assert "DICOM-SEG (seg.dcm) not written: the source images have no SOPInstanceUID" in payload["error"]
    finally:
        assert w.stop()


def test_a_version_1_job_store_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE jobs (key TEXT PRIMARY KEY, kind TEXT NOT NULL, folder TEXT NOT NULL, name TEXT NOT NULL,
            series_uid TEXT, description TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL CHECK (state IN ('discovered', 'complete', 'running', 'done', 'failed')),
            fingerprint TEXT, n_files INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
            interruptions INTEGER NOT NULL DEFAULT 0, error_kind TEXT, last_error TEXT, output_path TEXT, plan TEXT,
            budget_s REAL, predicted_s REAL, actual_s REAL, discovered_at REAL NOT NULL, completed_at REAL,
            started_at REAL, finished_at REAL, updated_at REAL NOT NULL);
        CREATE INDEX jobs_state ON jobs(state);
        CREATE INDEX jobs_updated ON jobs(updated_at);
        INSERT INTO jobs (key, kind, folder, name, state, fingerprint, discovered_at, updated_at)
            VALUES ('/in/a::1.2.3', 'dicom', '/in/a', 'a_00000123', 'done', 'fp', 1.0, 2.0);
        PRAGMA user_version = 1;
    """)
    db.commit()
    db.close()
    with JobStore(path) as store:
        assert store.get("/in/a::1.2.3").state == DONE and store.get("/in/a::1.2.3").fingerprint == "fp"
        store.mark_partial("/in/a::1.2.3", tmp_path, 1.5, "a_00000123: DICOM-SEG (seg.dcm) not written: x")
        assert store.get("/in/a::1.2.3").state == PARTIAL and store.counts()[PARTIAL] == 1
        assert not store.decide("/in/a::1.2.3", "fp", 3).run  # partial with the same input: not repeated
        assert store.decide("/in/a::1.2.3", "fp2", 3).run
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4  # 3: the outbox; 4: what was sent
    assert db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 0
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")} >= {
        "jobs_state", "jobs_updated"}
    db.close()
