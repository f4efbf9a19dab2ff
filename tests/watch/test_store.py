"""The job store: transitions, decisions, and reconciliation after a crash."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgeseg.runtime.watch.store import COMPLETE, DISCOVERED, DONE, FAILED, RUNNING, JobStore

MAX = 3


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    s = JobStore(tmp_path / "state" / "jobs.sqlite3")
    yield s
    s.close()


def _complete(store: JobStore, key: str = "k", fp: str = "fp1", folder: Path = Path("/x")) -> None:
    store.mark_complete(key, "dicom", folder, "name", fp, 3, "1.2.3", "desc")


def test_discover_then_complete_then_done(store: JobStore, tmp_path: Path) -> None:
    store.discover("k", "dicom", tmp_path, "name", "1.2.3", "desc")
    store.discover("k", "dicom", tmp_path, "other", None, "")  # a second discovery changes nothing
    assert store.get("k").state == DISCOVERED and store.get("k").name == "name"
    assert store.decide("k", "fp1", MAX).run
    _complete(store)
    assert store.mark_running("k", {"variant": "v"}, 120.0, 30.0) == 1
    row = store.get("k")
    assert row.state == RUNNING and row.plan_dict == {"variant": "v"} and row.predicted_s == 30.0
    out = tmp_path / "name.edgeseg"
    out.mkdir()
    store.mark_done("k", out, 12.5)
    row = store.get("k")
    assert row.state == DONE and row.output_path == str(out) and row.actual_s == 12.5
    assert store.counts()[DONE] == 1


def test_done_is_not_repeated_unless_input_changed_or_output_missing(store: JobStore, tmp_path: Path) -> None:
    out = tmp_path / "r.edgeseg"
    out.mkdir()
    _complete(store)
    store.mark_running("k")
    store.mark_done("k", out, 1.0)
    d = store.decide("k", "fp1", MAX)
    assert not d.run and "unchanged" in d.reason
    assert store.decide("k", "fp2", MAX).run
    out.rmdir()
    d = store.decide("k", "fp1", MAX)
    assert d.run and "missing" in d.reason


def test_failed_is_retried_until_max_attempts_then_only_on_new_input(store: JobStore) -> None:
    _complete(store)
    for attempt in range(1, MAX + 1):
        assert store.decide("k", "fp1", MAX).run, attempt
        assert store.mark_running("k") == attempt
        store.mark_failed("k", "invalid_series", f"bad {attempt}")
    d = store.decide("k", "fp1", MAX)
    assert not d.run and "given up" in d.reason
    row = store.get("k")
    assert row.state == FAILED and row.attempts == MAX and row.last_error == f"bad {MAX}"
    assert store.decide("k", "fp2", MAX).run  # new input: try again, counters reset on completion
    _complete(store, fp="fp2")
    assert store.get("k").attempts == 0


def test_give_up_at_once_for_a_deterministic_problem(store: JobStore) -> None:
    _complete(store)
    store.mark_running("k")
    store.mark_failed("k", "invalid_series", "no images", give_up=True, max_attempts=MAX)
    assert not store.decide("k", "fp1", MAX).run


def test_reconcile_sends_interrupted_rows_back_and_gives_up_crash_loops(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    _complete(store, "a")
    _complete(store, "b")
    store.mark_running("a")
    store.mark_running("b")
    store.close()  # the process "dies" with both running
    for restart in range(1, MAX + 1):
        store = JobStore(path)
        given_up = store.reconcile(MAX)
        if restart < MAX:
            assert given_up == []
            for key in ("a", "b"):
                row = store.get(key)
                assert row.state == COMPLETE and row.interruptions == restart and row.attempts == 0
                assert store.decide(key, "fp1", MAX).run
                store.mark_running(key)
        else:
            assert sorted(r.key for r in given_up) == ["a", "b"]
            assert all(r.state == FAILED and r.error_kind == "interrupted" for r in given_up)
            assert not store.decide("a", "fp1", MAX).run
        store.close()


def test_cancelled_attempt_is_not_counted(store: JobStore) -> None:
    _complete(store)
    store.mark_running("k")
    store.mark_cancelled("k")
    row = store.get("k")
    assert row.state == COMPLETE and row.attempts == 0


def test_readonly_store_and_rows_order(store: JobStore, tmp_path: Path) -> None:
    for key in ("a", "b", "c"):
        _complete(store, key)
    store.mark_running("b")
    ro = JobStore(store.path, readonly=True)
    try:
        assert ro.rows(limit=1)[0].key == "b"
        assert ro.counts()[COMPLETE] == 2
        with pytest.raises(sqlite3.OperationalError):
            ro._db.execute("DELETE FROM jobs")
    finally:
        ro.close()


def test_forget_removes_the_row(store: JobStore) -> None:
    _complete(store)
    store.forget("k")
    assert store.get("k") is None


def test_a_refused_delivery_makes_the_series_partial_until_a_retry_delivers_it(store: JobStore, tmp_path: Path) -> None:
    from edgeseg.runtime.watch.store import PARTIAL, DeliveryRequest

    (tmp_path / "out").mkdir()
    _complete(store)
    store.mark_running("k")
    store.mark_done("k", tmp_path / "out", 1.0,
                    deliveries=[DeliveryRequest("pacs", "seg", tmp_path / "seg.dcm", "1.2")])
    store.mark_undelivered("k", "SEG not delivered to pacs: refused")
    row = store.get("k")
    assert row is not None and (row.state, row.error_kind, row.last_error) == (
        PARTIAL, "delivery", "SEG not delivered to pacs: refused")
    assert store.decide("k", "fp1", 3).run is False  # not re-segmented for it
    assert store.mark_delivered("k") is True
    row = store.get("k")
    assert row is not None and (row.state, row.error_kind, row.last_error) == (DONE, None, None)
    # partial for another reason: that reason stays, the delivery is added, and a delivery alone does not undo it
    _complete(store, "p")
    store.mark_running("p")
    store.mark_partial("p", tmp_path / "out", 1.0, "DICOM-SEG not written: no UIDs")
    store.mark_undelivered("p", "SR not delivered to pacs: refused")
    row = store.get("p")
    assert row is not None and row.state == PARTIAL and row.error_kind == "partial"
    assert row.last_error == "DICOM-SEG not written: no UIDs Also: SR not delivered to pacs: refused"
    assert store.mark_delivered("p") is False and store.get("p").state == PARTIAL  # type: ignore[union-attr]
