"""The retention policy (issue 20): a delivered result and its received images older than the policy are removed, an
undelivered one and an unprocessed series are kept, the console's export folders keep their images unless the
policy says so, a watermark breach removes oldest-delivered first; nothing else is touched (the tree is hashed
before and after); each removal is recorded in the job store by UID."""
from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from watch_helpers import write_series

from edgeseg.runtime.read import discover_series
from edgeseg.runtime.watch.retention import DAY_S, Retention, RetentionPolicy
from edgeseg.runtime.watch.store import DeliveryRequest, JobStore


def tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` (relative path -> sha256 of its content)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _series(folder: Path, seed: int) -> tuple[str, str, Path]:
    """A received series folder with its result: (job key, SeriesInstanceUID, result folder)."""
    write_series(folder, 4, seed=seed)
    (ref,) = discover_series(folder)
    result = folder / f"{ref.name}.edgeseg"
    result.mkdir()
    (result / "seg.dcm").write_bytes(b"result " * (100 + seed))
    return ref.key, str(ref.uid), result


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    """The job store under ``tmp_path/state``, closed after the test (no -wal/-shm files left open)."""
    with JobStore(tmp_path / "state" / "jobs.sqlite3") as opened:
        yield opened


def _done(store: JobStore, key: str, uid: str, result: Path, *, deliver: str | None, sent_at: float | None = None
          ) -> None:
    """Record the series done; ``deliver``: None (no destination), "sent" (confirmed at ``sent_at``) or "pending"."""
    folder = result.parent
    store.mark_complete(key, "dicom", folder, result.name.removesuffix(".edgeseg"), "fp", 4, uid, "t1")
    store.mark_running(key)
    deliveries = [DeliveryRequest("pacs", "seg", result / "seg.dcm", uid + ".9")] if deliver else []
    store.mark_done(key, result, 1.0, deliveries=deliveries)
    if deliver == "sent":
        (row,) = store.deliveries_of(key)
        store.delivery_sent(row.id)
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE deliveries SET sent_at = ? WHERE id = ?", (sent_at, row.id))


def test_age_removes_delivered_series_only(tmp_path: Path, store: JobStore, caplog) -> None:
    received, export = tmp_path / "incoming", tmp_path / "export"
    now = time.time()
    old = now - 10 * DAY_S
    key_a, uid_a, result_a = _series(received / "1.2.3" / "a", 1)  # delivered 10 days ago: goes
    _done(store, key_a, uid_a, result_a, deliver="sent", sent_at=old)
    key_b, uid_b, result_b = _series(received / "1.2.3" / "b", 2)  # delivery pending: kept
    _done(store, key_b, uid_b, result_b, deliver="pending")
    key_c, uid_c, result_c = _series(received / "1.2.4" / "c", 3)  # complete, not yet segmented: kept
    store.mark_complete(key_c, "dicom", result_c.parent, "c", "fp", 4, uid_c)
    key_d, uid_d, result_d = _series(export / "exam", 4)  # the console's export folder: result goes, images stay
    _done(store, key_d, uid_d, result_d, deliver=None)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE jobs SET finished_at = ? WHERE key = ?", (old, key_d))
    (received / "notes.txt").write_text("not a series")
    before = {"incoming": tree(received), "export": tree(export)}

    caplog.set_level(logging.INFO, logger="edgeseg")
    policy = RetentionPolicy(received_days=7, results_days=7, min_free_mb=None)
    removed = Retention(store, policy, [received, export], received_root=received).run()

    assert sorted((r.series_uid, r.what, r.reason) for r in removed) == sorted(
        [(uid_a, "result", "age"), (uid_a, "input", "age"), (uid_d, "result", "age")])
    assert not (received / "1.2.3" / "a").exists()  # the received series' folder went with its files
    gone = {p for p in before["incoming"] if p.startswith("1.2.3/a/")}
    assert tree(received) == {p: h for p, h in before["incoming"].items() if p not in gone}
    assert tree(export) == {p: h for p, h in before["export"].items() if not p.startswith(f"exam/{result_d.name}/")}
    # recorded by UID, no names or paths; the row remembers it (not segmented again while unchanged)
    rows = store.removals()
    assert [(r["series_uid"], r["what"]) for r in rows] == [(r.series_uid, r.what) for r in removed]
    assert all(not any(str(tmp_path) in str(v) for v in r.values()) for r in rows)
    assert not store.decide(key_d, "fp", 3).run and "retention" in store.decide(key_d, "fp", 3).reason
    assert all(uid_a in m or uid_d in m for m in (r.getMessage() for r in caplog.records) if "retention:" in m)
    # the policy said nothing yet about the console's files: with export_folders they go too
    removed = Retention(store, RetentionPolicy(received_days=7, results_days=7, min_free_mb=None,
                                               export_folders=True), [received, export], received).run()
    assert [(r.series_uid, r.what) for r in removed] == [(uid_d, "input")]
    assert tree(export) == {}
    assert tree(received) == {p: h for p, h in before["incoming"].items() if p not in gone}


def test_a_watermark_breach_removes_oldest_delivered_first(tmp_path: Path, store: JobStore, caplog) -> None:
    received = tmp_path / "incoming"
    now = time.time()
    keys = {}
    for i, name in enumerate(["old", "middle", "new"]):
        key, uid, result = _series(received / "1.2.3" / name, i + 1)
        _done(store, key, uid, result, deliver="sent", sent_at=now - (3 - i) * 3600)
        keys[name] = uid
    key_u, uid_u, result_u = _series(received / "1.2.3" / "undelivered", 9)
    _done(store, key_u, uid_u, result_u, deliver="pending")
    size = {name: sum(p.stat().st_size for p in (received / "1.2.3" / name).rglob("*") if p.is_file())
            for name in ("old", "middle", "new", "undelivered")}
    before = tree(received)

    def used() -> int:
        return sum(p.stat().st_size for p in received.rglob("*") if p.is_file())

    need = 10_000_000
    capacity = used() + need - size["old"] // 2  # removing the oldest series is enough
    policy = RetentionPolicy(received_days=None, results_days=None, min_free_mb=need / 1e6)
    removed = Retention(store, policy, [received], received, free_bytes=lambda _: capacity - used()).run()
    assert {(r.series_uid, r.reason) for r in removed} == {(keys["old"], "watermark")}
    assert tree(received) == {p: h for p, h in before.items() if not p.startswith("1.2.3/old/")}

    # far below the watermark: every delivered series goes, oldest first; the undelivered one stays, and a warning
    caplog.set_level(logging.INFO, logger="edgeseg")
    removed = Retention(store, policy, [received], received, free_bytes=lambda _: 0).run()
    assert [r.series_uid for r in removed if r.what == "input"] == [keys["middle"], keys["new"]]
    assert tree(received) == {p: h for p, h in before.items() if p.startswith("1.2.3/undelivered/")}
    assert any(r.levelno == logging.WARNING and "no delivered series is left" in r.getMessage()
               for r in caplog.records)
    assert {pydicom.dcmread(received / p, stop_before_pixels=True).SeriesInstanceUID
            for p in tree(received) if not p.endswith("seg.dcm")} == {uid_u}


def test_the_watcher_applies_the_policy_and_does_not_segment_again(start_watcher, segmenter, roots: Path) -> None:
    """A running watcher removes a delivered result by the policy (here at once: results_days 0, no destination)
    and does not segment the series again while its images are unchanged, also after a restart."""
    from watch_helpers import results, wait_for

    overrides = {"retention.results_days": 0.0, "retention.received_days": None, "retention.interval_s": 0.1,
                 "rescan_interval_s": 0.2}
    w = start_watcher(**overrides)
    write_series(roots / "exam", 4)
    assert wait_for(lambda: sum(segmenter.calls.values()) == 1)
    assert wait_for(lambda: results(roots) == [] and len(w.store.removals()) == 1)
    assert w.wait_idle(10)
    time.sleep(0.5)  # rescans: the series is seen again, and not re-run
    assert sum(segmenter.calls.values()) == 1
    w.stop()
    w2 = start_watcher(**overrides)
    assert w2.wait_idle(10)
    assert sum(segmenter.calls.values()) == 1 and results(roots) == []
    assert [(r["what"], r["reason"]) for r in w2.store.removals()] == [("result", "age")]


def test_skipped_series_that_were_received_go_by_the_same_rules(tmp_path: Path, store: JobStore) -> None:
    """A DTI the listener received and the selection rules skipped is not kept forever: received_days after it was
    skipped its images go (recorded by UID); a skipped series in the console's export folder stays."""
    from helpers.series_cases import canon_dti

    received, export = tmp_path / "incoming", tmp_path / "export"
    dti = canon_dti(received / "1.2.3" / "dti")
    exported = canon_dti(export / "exam")
    for files in (dti, exported):
        (ref,) = discover_series(files[0].parent, echoes="first")
        assert store.mark_skipped(ref.series_key, "dicom", ref.folder, ref.uid, "DTI", "selection.x: y", "fp")
        assert not store.mark_skipped(ref.series_key, "dicom", ref.folder, ref.uid, "DTI", "selection.x: y", "fp")
    before = tree(export)
    uid = str(pydicom.dcmread(dti[0], stop_before_pixels=True).SeriesInstanceUID)
    policy = RetentionPolicy(received_days=7, results_days=7, min_free_mb=None)
    later = time.time() + 8 * DAY_S
    assert Retention(store, policy, [received, export], received, wall=lambda: later).run() != []
    assert tree(received) == {} and tree(export) == before
    (removal,) = store.removals()
    assert removal["what"] == "input" and removal["files"] == len(dti)
    assert removal["series_uid"] == uid
    assert Retention(store, policy, [received, export], received, wall=lambda: later).run() == []
