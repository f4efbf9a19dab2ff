"""The outbox tells the truth (issue 18): against real peers (Orthanc 1.10, DCMTK storescp) and with the delivery
worker on a real job store. An unknown AE aborted at the C-STORE is a permanent failure naming our AE title; a PACS
back up is sent to within seconds (C-ECHO during back-off); a slow PACS gets exactly one copy; an SR goes only after
its SEG; a result made again replaces stale rows; ``deliver --now``; ``status`` never says a plain ``done`` before
the destinations have the result; a configuration the destinations cannot take does not start; routine retries log
no ERROR line. Every peer is on 127.0.0.1 with bounded timeouts."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

import pydicom
import pytest
from helpers.dicom_cases import small_volume
from helpers.dicom_peers import LOOPBACK, DcmtkStorescp, OrthancPacs, free_port, require_peer

from edgeseg.cli import main
from edgeseg.demo.dicom_series import write_dicom_series
from edgeseg.errors import ConfigError
from edgeseg.runtime.node.send import StoreOutcome, echo, send_files, tame_pynetdicom_logs
from edgeseg.runtime.node.settings import DeliverySettings, Destination
from edgeseg.runtime.watch.deliver import DeliveryWorker
from edgeseg.runtime.watch.store import FAILED, PENDING, SENT, DeliveryRequest, JobStore

OUR_AE = "EDGESEG"


@pytest.fixture(autouse=True)
def _no_edgeseg_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EDGESEG_"):
            monkeypatch.delenv(name)


def _file(folder: Path, seed: int = 0) -> tuple[Path, str]:
    """A small MR DICOM file standing in for a result (SEG or SR) to deliver, and its SOP Instance UID."""
    [path] = write_dicom_series(small_volume(1, shape=(16, 16)), folder, series_description=f"result {seed}")
    return path, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _store_with_result(tmp_path: Path, destination: str = "pacs", key: str = "in::1.2.3") -> tuple[JobStore, dict]:
    """A job store with one done series whose SEG and SR (stand-ins) are pending for ``destination``."""
    store = JobStore(tmp_path / "state" / "jobs.sqlite3")
    store.discover(key, "dicom", tmp_path / "in", "series", "1.2.3")
    store.mark_complete(key, "dicom", tmp_path / "in", "series", "fp", 1, "1.2.3")
    store.mark_running(key)
    seg, seg_uid = _file(tmp_path / "seg")
    sr, sr_uid = _file(tmp_path / "sr", 1)
    store.mark_done(key, tmp_path / "out", 1.0, deliveries=[DeliveryRequest(destination, "seg", seg, seg_uid),
                                                            DeliveryRequest(destination, "sr", sr, sr_uid)])
    return store, {"seg": seg_uid, "sr": sr_uid}


def _destination(port: int, aet: str = "PACS", timeout_s: float = 5.0) -> Destination:
    return Destination(name="pacs", ae_title=aet, host=LOOPBACK, port=port, timeout_s=timeout_s)


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# -------------------------------------------------------------------------------------- real peers: Orthanc


def test_unknown_ae_aborted_at_c_store_is_permanent_and_names_our_ae(tmp_path: Path) -> None:
    """Orthanc with DicomAlwaysAllowEcho (its default) answers anyone's C-ECHO and aborts the C-STORE of an AE title
    it does not know: that is not a time-out to retry, it is a registration to fix, and the message says which."""
    require_peer("orthanc")
    with OrthancPacs(tmp_path / "orthanc", always_allow_echo=True) as pacs:
        destination = _destination(pacs.dicom_port, pacs.aet)
        assert echo(destination, OUR_AE)[0]  # C-ECHO from anyone: why doctor's echo alone cannot tell
        path, uid = _file(tmp_path / "r")
        [outcome] = send_files(destination, [path], OUR_AE)
        assert not outcome.ok and outcome.permanent, outcome
        assert f"our AE title {OUR_AE!r}" in outcome.message and "aborted" in outcome.message
        assert f"register AE title {OUR_AE!r}" in outcome.message
        assert f"{pacs.aet}@{LOOPBACK}:{pacs.dicom_port}" in outcome.message

        store, uids = _store_with_result(tmp_path)
        worker = DeliveryWorker(store, [destination], DeliverySettings(retry_initial_s=0.2), OUR_AE,
                                threading.Event())
        worker.deliver_due()
        time.sleep(0.5)
        worker.deliver_due()  # past the retry interval: a permanent failure is not tried again
        rows = {d.role: d for d in store.deliveries()}
        assert rows["seg"].state == FAILED and rows["seg"].attempts == 1 and OUR_AE in (rows["seg"].last_error or "")
        # the SR is not sent without its SEG (no orphan SR in PACS)
        assert rows["sr"].state == FAILED and rows["sr"].attempts == 0
        assert "its SEG was not accepted" in (rows["sr"].last_error or "")
        assert pacs.count_instances() == 0
        store.close()


def test_a_pacs_back_up_gets_the_results_within_15_s_although_back_off_is_long(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The back-off is 60 s, but the destination is C-ECHOed meanwhile: it gets what is pending as soon as it
    answers. The outage logs our WARNING per retry and no ERROR line (pynetdicom's are lowered to DEBUG)."""
    require_peer("orthanc")
    pacs = OrthancPacs(tmp_path / "orthanc", modalities={"edgeseg": (OUR_AE, LOOPBACK, 104)})
    store, uids = _store_with_result(tmp_path)
    stop = threading.Event()
    worker = DeliveryWorker(store, [_destination(pacs.dicom_port, pacs.aet)],
                            DeliverySettings(retry_initial_s=60.0, retry_max_s=900.0), OUR_AE, stop)
    thread = threading.Thread(target=worker.run, daemon=True)
    caplog.set_level(logging.INFO)
    tame_pynetdicom_logs()
    thread.start()
    try:
        assert _wait(lambda: any(d.attempts >= 1 for d in store.deliveries()), 30)
        time.sleep(3)  # the outage goes on for a while
        assert {d.state for d in store.deliveries()} == {PENDING}
        with pacs:
            up = time.monotonic()
            assert _wait(lambda: [d.state for d in store.deliveries()] == [SENT, SENT], 30), store.deliveries()
            took = time.monotonic() - up
            assert pacs.count_instances() == 2
    finally:
        stop.set()
        thread.join(10)
        store.close()
    assert took <= 15.0, f"delivered {took:.1f} s after the PACS came back"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.name, r.getMessage()) for r in errors]
    retries = [r for r in caplog.records if r.levelno == logging.WARNING and "will be retried" in r.getMessage()]
    assert retries and all(r.name == "edgeseg.runtime.watch.deliver" for r in retries)


# ---------------------------------------------------------------------------------------- real peers: DCMTK


def test_a_slow_pacs_gets_exactly_one_copy(tmp_path: Path) -> None:
    """DCMTK storescp sleeping 4 s inside each store, and timeout_s 1: the send waits for the response (not
    timeout_s) and is never repeated, so the PACS has exactly one copy of the SEG and one of the SR."""
    require_peer("storescp")
    with DcmtkStorescp(tmp_path / "received", aet="SLOW", extra=("--sleep-during", "4")) as scp:
        store, uids = _store_with_result(tmp_path)
        stop = threading.Event()
        worker = DeliveryWorker(store, [_destination(scp.port, scp.aet, timeout_s=1.0)],
                                DeliverySettings(retry_initial_s=0.5, retry_max_s=1.0), OUR_AE, stop)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            assert _wait(lambda: [d.state for d in store.deliveries()] == [SENT, SENT], 60), store.deliveries()
            time.sleep(2)  # longer than the retry interval: nothing is sent again
        finally:
            stop.set()
            thread.join(20)
        received = scp.files()
        assert sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in received) == \
            sorted(uids.values())
        assert scp.log().count("Received Store Request") == 2, scp.log()
        assert [d.attempts for d in store.deliveries()] == [1, 1]
        store.close()


def test_start_is_refused_when_a_destination_takes_no_seg(tmp_path: Path) -> None:
    """storescp told to accept only MR images (and Verification): the SEG could never go; the watcher does not
    start, with doctor's message."""
    from helpers.fake_segmenter import FakeSegmenter

    from edgeseg.runtime.watch.config import load_config
    from edgeseg.runtime.watch.service import Watcher

    require_peer("storescp")
    profile = tmp_path / "mr_only.cfg"
    profile.write_text("[[TransferSyntaxes]]\n[Uncompressed]\nTransferSyntax1 = LittleEndianExplicit\n"
                       "TransferSyntax2 = LittleEndianImplicit\n[[PresentationContexts]]\n[MROnly]\n"
                       "PresentationContext1 = MRImageStorage\\Uncompressed\n"
                       "PresentationContext2 = VerificationSOPClass\\Uncompressed\n"
                       "[[Profiles]]\n[MROnly]\nPresentationContexts = MROnly\n", encoding="utf-8")
    (tmp_path / "in").mkdir()
    with DcmtkStorescp(tmp_path / "received", aet="MRONLY", extra=("-xf", str(profile), "MROnly"),
                       accept_all=False) as scp:
        config = load_config(None, {"roots": [str(tmp_path / "in")], "bundle": "demo",
                                    "state_dir": str(tmp_path / "state"),
                                    "destinations": [{"name": "mr_archive", "ae_title": scp.aet, "host": LOOPBACK,
                                                      "port": scp.port, "send": ["seg"], "timeout_s": 5}]}, env={})
        watcher = Watcher(config, FakeSegmenter())
        with pytest.raises(ConfigError) as refused:
            try:
                watcher.start()
            finally:
                watcher.stop(timeout=5)
    text = str(refused.value)
    assert "destination mr_archive SEG" in text and "does not accept Segmentation Storage" in text, text
    assert "Fix: allow DICOM-SEG on it, or remove seg from send of destination mr_archive" in text


# ---------------------------------------------------------------------------- the worker on a real job store


def _outcome(path: Path, ok: bool, permanent: bool = False, message: str = "") -> StoreOutcome:
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    return StoreOutcome(path, uid, 0 if ok else None, ok, permanent, message or ("status 0x0000" if ok else "no"))


def test_the_sr_waits_for_its_seg_and_is_sent_only_after_it(tmp_path: Path) -> None:
    store, uids = _store_with_result(tmp_path)
    sent: list[list[str]] = []
    seg_ok = {"value": False}

    def sender(destination: Destination, files: list[Path], calling: str) -> list[StoreOutcome]:
        sent.append([str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files])
        return [_outcome(f, seg_ok["value"]) for f in files]

    now = {"t": time.time()}
    worker = DeliveryWorker(store, [_destination(104)], DeliverySettings(retry_initial_s=10.0), OUR_AE,
                            threading.Event(), sender=sender, clock=lambda: now["t"], echoer=lambda d, a: (False, ""))
    worker.deliver_due()
    assert sent == [[uids["seg"]]]  # the SEG failed (transient): the SR was not sent
    rows = {d.role: d for d in store.deliveries()}
    assert rows["sr"].state == PENDING and rows["sr"].attempts == 0 and "waits for its SEG" in rows["sr"].last_error
    seg_ok["value"] = True
    now["t"] += 11
    worker.deliver_due()
    assert sent[1:] == [[uids["seg"]], [uids["sr"]]]  # the SEG, then (accepted) its SR
    rows = {d.role: d for d in store.deliveries()}
    assert (rows["seg"].state, rows["sr"].state) == (SENT, SENT)
    assert rows["seg"].sent_sop_instance_uid == uids["seg"] and rows["sr"].sent_kind == "sr"
    store.close()


def test_a_result_made_again_replaces_its_stale_outbox_rows(tmp_path: Path) -> None:
    """Re-segmented under other settings (another SEG type: another SOP Instance UID), the pending rows of the old
    objects go: the outbox never sends a file that no longer is the result."""
    store, uids = _store_with_result(tmp_path)
    rows = {d.role: d for d in store.deliveries()}
    store.delivery_failed(rows["seg"].id, "the destination does not accept Label Map Segmentation Storage")
    new_seg, new_uid = _file(tmp_path / "seg2", 2)
    store.mark_running("in::1.2.3")
    store.mark_done("in::1.2.3", tmp_path / "out", 1.0, deliveries=[
        DeliveryRequest("pacs", "seg", new_seg, new_uid), DeliveryRequest("pacs", "sr", rows["sr"].file, uids["sr"])])
    rows = store.deliveries()
    assert sorted((d.role, d.sop_instance_uid, d.state) for d in rows) == [
        ("seg", new_uid, PENDING), ("sr", uids["sr"], PENDING)]
    store.close()


def test_replace_objects_renames_the_unsent_seg_and_sr_rows_and_drops_one_the_destination_has(tmp_path: Path) -> None:
    store, uids = _store_with_result(tmp_path)
    rows = {d.role: d for d in store.deliveries()}
    new_seg, new_seg_uid = _file(tmp_path / "seg.binary", 5)
    new_sr, new_sr_uid = _file(tmp_path / "sr.binary", 6)
    now = store.replace_objects(rows["seg"], new_seg, new_seg_uid, new_sr, new_sr_uid)
    assert now is not None and (now.id, now.sop_instance_uid, now.file) == (rows["seg"].id, new_seg_uid, new_seg)
    after = {d.role: d for d in store.deliveries()}
    assert (after["sr"].id, after["sr"].sop_instance_uid, after["sr"].file) == (rows["sr"].id, new_sr_uid, new_sr)
    assert {d.state for d in after.values()} == {PENDING}
    # the destination has that SEG already (sent for another row): the stale row goes, nothing is sent twice
    other, other_uid = _file(tmp_path / "other", 7)
    store.mark_done("in::9.9", tmp_path / "out", 1.0, deliveries=[DeliveryRequest("pacs", "seg", other, other_uid)])
    [sent] = [d for d in store.deliveries() if d.sop_instance_uid == other_uid]
    store.delivery_sent(sent.id, other_uid, "binary")
    assert store.replace_objects(after["seg"], other, other_uid, None, None) is None
    assert sorted((d.job_key, d.role, d.state) for d in store.deliveries()) == [
        ("in::1.2.3", "sr", PENDING), ("in::9.9", "seg", SENT)]
    store.close()


def test_store_version_3_gains_the_sent_columns(tmp_path: Path) -> None:
    import sqlite3

    store, _ = _store_with_result(tmp_path)
    store.close()
    path = tmp_path / "state" / "jobs.sqlite3"
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE deliveries DROP COLUMN sent_sop_instance_uid")
    db.execute("ALTER TABLE deliveries DROP COLUMN sent_kind")
    db.execute("PRAGMA user_version=3")
    db.commit()
    db.close()
    with JobStore(path, readonly=True) as old:  # status on a version-3 store reads it as it is
        assert {d.sent_kind for d in old.deliveries()} == {None}
    with JobStore(path) as store:
        [row, _] = store.deliveries()
        store.delivery_sent(row.id, "1.2.3.4", "binary")
        assert {d.sent_kind for d in store.deliveries()} == {"binary", None}


# ------------------------------------------------------------------------------------- commands and logging


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    path = tmp_path / "watch_config.yaml"
    path.write_text(f"roots: [in]\nbundle: demo\nstate_dir: state\ndestinations:\n  - {{name: pacs, ae_title: PACS, "
                    f"host: {LOOPBACK}, port: {free_port()}, timeout_s: 5}}\n", encoding="utf-8")
    return path


def _config_to(tmp_path: Path, port: int, aet: str) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    path = tmp_path / "watch_config.yaml"
    path.write_text(f"roots: [in]\nbundle: demo\nstate_dir: state\ndestinations:\n  - {{name: pacs, ae_title: {aet}, "
                    f"host: {LOOPBACK}, port: {port}, timeout_s: 5}}\n", encoding="utf-8")
    return path


def _backed_off_result(tmp_path: Path) -> dict:
    store, uids = _store_with_result(tmp_path)
    for d in store.deliveries():
        store.delivery_retry(d.id, time.time() + 900, "no association (connection refused)")
    store.close()
    return uids


def test_deliver_now_with_no_watcher_sends_the_pending_deliveries_itself(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """No watcher holds the state folder: ``deliver --now`` sends what waits in back-off itself, with the watcher's
    delivery code (SEG before SR), and says so; DCMTK storescp receives both."""
    require_peer("storescp")
    uids = _backed_off_result(tmp_path)
    with DcmtkStorescp(tmp_path / "received", aet="ARCHIVE") as scp:
        config_path = _config_to(tmp_path, scp.port, scp.aet)
        assert main(["deliver", "--now", "--config", str(config_path)]) == 0
        out = capsys.readouterr().out
        received = scp.wait_for(2)
    assert "2 deliveries are due now." in out and "No watcher runs on this state folder: this command sends" in out
    assert "sent 2, failed for good 0, still pending 0." in out, out
    assert sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in received) == \
        sorted(uids.values())
    log = scp.log()
    assert log.index(uids["seg"]) < log.index(uids["sr"])  # the SEG first, then its SR
    with JobStore(tmp_path / "state" / "jobs.sqlite3", readonly=True) as store:
        assert {d.role: (d.state, d.sent_sop_instance_uid) for d in store.deliveries()} == {
            "seg": (SENT, uids["seg"]), "sr": (SENT, uids["sr"])}
    from edgeseg.runtime.watch.lock import lock_is_held

    assert lock_is_held(tmp_path / "state") is False  # the state folder is free again for the watcher


def test_deliver_now_with_no_watcher_and_the_pacs_down_says_what_is_pending(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _backed_off_result(tmp_path)
    config_path = _config_to(tmp_path, free_port(), "PACS")  # nobody listens there
    assert main(["deliver", "--now", "--config", str(config_path)]) == 19
    out = capsys.readouterr().out
    assert "sent 0, failed for good 0, still pending 2." in out and "connection refused" in out.lower(), out
    with JobStore(tmp_path / "state" / "jobs.sqlite3", readonly=True) as store:
        assert {d.state for d in store.deliveries()} == {PENDING}


def test_deliver_now_with_a_watcher_running_only_signals_it(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A watcher holds the state folder (its lock and a fresh heartbeat): ``deliver --now`` makes the deliveries due
    and leaves the sending to it; nothing reaches the PACS from the command."""
    import json

    from edgeseg.runtime.watch.lock import StateLock

    require_peer("storescp")
    _backed_off_result(tmp_path)
    watcher_lock = StateLock(tmp_path / "state")
    watcher_lock.acquire()
    (tmp_path / "state" / "watcher.json").write_text(json.dumps(
        {"pid": os.getpid(), "started_at": time.time() - 60, "heartbeat_at": time.time()}), encoding="utf-8")
    try:
        with DcmtkStorescp(tmp_path / "received", aet="ARCHIVE") as scp:
            config_path = _config_to(tmp_path, scp.port, scp.aet)
            assert main(["deliver", "--now", "--config", str(config_path)]) == 0
            out = capsys.readouterr().out
            time.sleep(1.0)
            assert scp.files() == []
    finally:
        watcher_lock.release()
    assert "2 deliveries are due now." in out and "The watcher is running" in out and "within seconds" in out, out
    with JobStore(tmp_path / "state" / "jobs.sqlite3", readonly=True) as store:
        assert all(d.next_at <= time.time() and d.state == PENDING for d in store.deliveries())


def test_status_never_shows_a_plain_done_before_the_destination_has_it(tmp_path: Path, config_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    store, _ = _store_with_result(tmp_path)
    store.close()
    assert main(["status", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert " done, delivery pending " in out, out
    assert "1 of the recent done ones not delivered yet" in out


def test_pynetdicom_routine_errors_are_lowered_to_debug(caplog: pytest.LogCaptureFixture) -> None:
    tame_pynetdicom_logs()
    caplog.set_level(logging.INFO)
    logging.getLogger("pynetdicom.transport").error("Association request failed: unable to connect to remote")
    logging.getLogger("pynetdicom.association").error("Exception in the handler bound to 'evt.EVT_C_STORE'")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "Exception in the handler bound to 'evt.EVT_C_STORE'"]  # a bug stays an ERROR
