"""The DICOM node's commands through the command line: ``status`` and ``deliver --retry`` on the job store's outbox,
``doctor`` on the listener and on real destinations (a private Orthanc 1.10, DCMTK's storescp), ``demo --dicom`` end
to end with the real demo bundle. Every peer is on 127.0.0.1 with bounded timeouts."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage
from pynetdicom.sop_class import LabelMapSegmentationStorage
from helpers.dicom_cases import small_volume
from helpers.dicom_peers import LOOPBACK, DcmtkStorescp, OrthancPacs, free_port, require_peer
from helpers.fake_segmenter import FakeSegmenter

from edgeseg.cli import main
from edgeseg.demo.dicom_series import write_dicom_series
from edgeseg.runtime.watch.config import load_config
from edgeseg.runtime.watch.service import Watcher
from edgeseg.runtime.watch.store import DeliveryRequest, JobStore

OUR_AE = "EDGESEG"  # our calling AE title towards destinations (the listener is off: the default)
LABEL_MAP = LabelMapSegmentationStorage



@pytest.fixture(autouse=True)
def _no_edgeseg_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EDGESEG_"):
            monkeypatch.delenv(name)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """``write_config(extra_yaml)``: watch_config.yaml with a root, the demo bundle (the default), a state folder
    under tmp_path, no time budget, and ``extra_yaml`` appended."""
    (tmp_path / "in").mkdir(exist_ok=True)

    def write(extra: str = "") -> Path:
        path = tmp_path / "watch_config.yaml"
        path.write_text("roots: [in]\nbundle: demo\nstate_dir: state\ntime_budget_s: null\nquiet_period_s: 0.5\n"
                        + extra, encoding="utf-8")
        return path
    return write


def _destinations_yaml(*entries: tuple[str, str, int]) -> str:
    lines = ["destinations:"]
    for name, aet, port in entries:
        lines.append(f"  - {{name: {name}, ae_title: {aet}, host: {LOOPBACK}, port: {port}, timeout_s: 5}}")
    return "\n".join(lines) + "\n"


def _result_file(folder: Path) -> tuple[Path, str]:
    """A small MR DICOM file standing in for a result to deliver, and its SOP Instance UID."""
    [path] = write_dicom_series(small_volume(1, shape=(16, 16)), folder, series_description="to deliver")
    return path, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _outbox(store_path: Path, folder: Path) -> dict[str, str]:
    """A job store with four deliveries made through the JobStore API: pending and due later after one failed try
    (pacs/seg), sent (pacs/sr), failed for good (pacs/seg of a second series, and archive/seg). Returns the
    SOP Instance UID of each by label."""
    uids: dict[str, str] = {}
    with JobStore(store_path) as store:
        for label, key, destination, role in (("retrying", "in::1.2.3", "pacs", "seg"),
                                              ("sent", "in::1.2.3", "pacs", "sr"),
                                              ("failed", "in::1.2.4", "pacs", "seg"),
                                              ("archive", "in::1.2.4", "archive", "seg")):
            path, uid = _result_file(folder / label)
            uids[label] = uid
            store.mark_done(key, None, 1.0, deliveries=[DeliveryRequest(destination, role, path, uid)])
        by_uid = {d.sop_instance_uid: d for d in store.deliveries()}
        store.delivery_retry(by_uid[uids["retrying"]].id, time.time() + 600, "no association (connection refused)")
        store.delivery_sent(by_uid[uids["sent"]].id)
        store.delivery_failed(by_uid[uids["failed"]].id, "association rejected (permanent): our calling AE title "
                              "'EDGESEG' is not known to it")
        store.delivery_failed(by_uid[uids["archive"]].id, "status 0xA900: the destination refused the object")
    return uids


# ----------------------------------------------------------------------------------------------------- status


def test_status_shows_pending_and_failed_deliveries(write_config: Callable[[str], Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(_destinations_yaml(("pacs", "PACS", 104)))
    _outbox(load_config(config).store_path, tmp_path / "results")
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "deliveries: 1 pending, 1 sent, 2 failed" in out
    assert "Deliveries pending or failed (3;" in out
    header = next(line for line in out.splitlines() if line.startswith("DESTINATION"))
    assert header.split() == ["DESTINATION", "ROLE", "STATE", "TRIES", "NEXT", "TRY", "/", "LAST", "ERROR", "SERIES",
                              "KEY"]
    rows = [line for line in out.splitlines() if line.startswith(("pacs ", "archive "))]
    assert len(rows) == 3, out
    [retrying] = [r for r in rows if " pending " in r]
    assert retrying.split()[:4] == ["pacs", "seg", "pending", "1"]
    assert "in 10 min; last: no association (connection refused)" in retrying and "in::1.2.3" in retrying
    assert any("failed" in r and "our calling AE title 'EDGESEG'" in r and "in::1.2.4" in r for r in rows), rows
    assert any(r.startswith("archive") and "0xA900" in r for r in rows), rows
    # the jobs part is unchanged
    assert "watcher: not running" in out and "Recent (" in out

    assert main(["status", "--config", str(config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["deliveries"]["counts"] == {"pending": 1, "sent": 1, "failed": 2}
    assert sorted((d["destination"], d["state"]) for d in data["deliveries"]["open"]) == [
        ("archive", "failed"), ("pacs", "failed"), ("pacs", "pending")]
    assert {"watcher", "state", "counts", "recent"} <= set(data)


def test_status_of_a_store_before_the_outbox_shows_no_deliveries(write_config: Callable[[str], Path],
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A schema-2 store (no deliveries table; status opens it read-only and does not migrate it)."""
    config = write_config()
    store_path = load_config(config).store_path
    with JobStore(store_path):
        pass
    with sqlite3.connect(store_path) as db:
        db.execute("DROP TABLE deliveries")
        db.execute("PRAGMA user_version=2")
    db.close()
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "deliveries" not in out.lower() and "series:" in out
    assert main(["status", "--config", str(config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["deliveries"] == {"counts": {"pending": 0, "sent": 0, "failed": 0}, "open": []}
    with sqlite3.connect(store_path) as db:  # still schema 2: status did not write
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()


# ---------------------------------------------------------------------------------------------------- deliver


def test_deliver_retry_makes_failed_deliveries_pending(write_config: Callable[[str], Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(_destinations_yaml(("pacs", "PACS", 104)))
    assert main(["deliver", "--retry", "--config", str(config)]) == 1  # no job store yet
    assert "No job store" in capsys.readouterr().out
    store_path = load_config(config).store_path
    uids = _outbox(store_path, tmp_path / "results")

    assert main(["deliver", "--config", str(config)]) == 0  # no --retry: lists, changes nothing
    out = capsys.readouterr().out
    assert "deliveries: 1 pending, 1 sent, 2 failed" in out and "Failed (2)" in out and "0xA900" in out

    assert main(["deliver", "--retry", "--destination", "pacs", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "1 failed delivery is pending again to pacs." in out
    assert "No watcher runs on this state folder" in out and "when it starts next" in out
    with JobStore(store_path, readonly=True) as store:
        state = {d.sop_instance_uid: d for d in store.deliveries()}
    assert state[uids["failed"]].state == "pending" and state[uids["failed"]].next_at <= time.time()
    assert state[uids["archive"]].state == "failed"
    assert state[uids["sent"]].state == "sent" and state[uids["retrying"]].state == "pending"

    # archive is not configured: said so, and retried anyway (it fails again at once, as the worker says why)
    assert main(["deliver", "--retry", "--destination", "archive", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "'archive' is not among the configured destinations (pacs)" in out
    assert "1 failed delivery is pending again to archive." in out
    assert main(["deliver", "--retry", "--config", str(config)]) == 0
    assert "No failed deliveries to retry." in capsys.readouterr().out


def test_deliver_retry_is_picked_up_by_the_running_watcher(write_config: Callable[[str], Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A failed delivery stays failed while the watcher runs; `deliver --retry` from another command makes it
    pending, and the watcher's delivery thread sends it to the (real, DCMTK) destination within seconds."""
    require_peer("storescp")
    with DcmtkStorescp(tmp_path / "received", aet="STORESCP") as scp:
        config_path = write_config(_destinations_yaml(("pacs", scp.aet, scp.port)))
        config = load_config(config_path)
        path, uid = _result_file(tmp_path / "result")
        with JobStore(config.store_path) as store:
            store.mark_done("in::1.2.3", None, 1.0, deliveries=[DeliveryRequest("pacs", "seg", path, uid)])
            [row] = store.deliveries()
            store.delivery_failed(row.id, "association rejected (permanent): our AE title unknown")
        before = set(threading.enumerate())
        watcher = Watcher(config, FakeSegmenter(), settle_s=0.1)
        watcher.start()
        try:
            deadline = time.monotonic() + 10
            while not (config.state_dir / "watcher.json").is_file() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.5)
            assert scp.files() == []  # failed is not retried by itself
            assert main(["deliver", "--retry", "--config", str(config_path)]) == 0
            out = capsys.readouterr().out
            assert "1 failed delivery is pending again." in out
            assert "The watcher is running (pid" in out and "within seconds" in out
            received = scp.wait_for(1, timeout=15)
            assert [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in received] == [uid]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if [d.state for d in watcher.store.deliveries()] == ["sent"]:  # type: ignore[union-attr]
                    break
                time.sleep(0.1)
            assert [d.state for d in watcher.store.deliveries()] == ["sent"]  # type: ignore[union-attr]
        finally:
            watcher.stop()
        deadline = time.monotonic() + 5
        while set(threading.enumerate()) - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not {t for t in set(threading.enumerate()) - before if t.name.startswith("edgeseg")}


# ----------------------------------------------------------------------------------------------------- doctor


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPacs]:
    """A private Orthanc 1.10 that knows our AE title (modality entry for EDGESEG on 127.0.0.1)."""
    require_peer("orthanc")
    with OrthancPacs(tmp_path_factory.mktemp("orthanc"), modalities={"edgeseg": (OUR_AE, LOOPBACK, 11112)}) as pacs:
        yield pacs


def _lines(out: str, prefix: str) -> list[str]:
    return [line for line in out.splitlines() if prefix in line]


def test_doctor_checks_destinations_against_a_real_orthanc(orthanc: OrthancPacs, write_config: Callable[[str], Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    nobody = free_port()
    config = write_config(_destinations_yaml(("pacs", orthanc.aet, orthanc.dicom_port), ("nowhere", "GONE", nobody))
                          + "outputs:\n  seg_type: labelmap\n")
    assert main(["doctor", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert _lines(out, "destination pacs:")[0].startswith("OK    destination pacs: C-ECHO answered by "
                                                           f"{orthanc.aet}@{LOOPBACK}:{orthanc.dicom_port}"), out
    # Orthanc 1.10 does not know the label-map SEG: negotiated, it gets a BINARY SEG rendered from the label map
    [seg] = _lines(out, "destination pacs SEG:")
    assert seg.startswith("OK") and "does not accept Label Map Segmentation Storage" in seg and LABEL_MAP in seg, out
    assert "BINARY SEG rendered" in seg
    [sr] = _lines(out, "destination pacs SR:")
    assert sr.startswith("OK") and f"Comprehensive 3D SR Storage ({Comprehensive3DSRStorage})" in sr, out
    [dead] = _lines(out, "destination nowhere:")
    assert dead.startswith("FAIL") and f"GONE@{LOOPBACK}:{nobody}" in dead, out
    assert all(line.startswith("SKIP") for line in _lines(out, "destination nowhere S")), out
    assert "OK    DICOM listener: off (no port opened)" in out
    assert "OK    bundle:" in out  # the demo bundle: the FAILs above are the only ones
    assert out.rstrip().endswith(", 1 FAIL"), out

    config = write_config(_destinations_yaml(("pacs", orthanc.aet, orthanc.dicom_port)))  # the default: binary
    code = main(["doctor", "--config", str(config)])
    out = capsys.readouterr().out
    [seg] = _lines(out, "destination pacs SEG:")
    assert seg.startswith("OK") and f"accepts Segmentation Storage ({SegmentationStorage})" in seg, out
    assert code == 0, out

    # an AE title Orthanc does not know: C-ECHO fails with the reason, nothing else is tried
    config = write_config(_destinations_yaml(("pacs", orthanc.aet, orthanc.dicom_port)).replace(
        "timeout_s: 5}", "timeout_s: 5, calling_ae_title: STRANGER}"))
    assert main(["doctor", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    [echo] = _lines(out, "destination pacs:")
    assert echo.startswith("FAIL") and "rejected" in echo and "'STRANGER'" in echo, out
    assert all(line.startswith("SKIP") for line in _lines(out, "destination pacs S")), out


def test_doctor_tells_whether_the_pacs_takes_our_c_stores_from_the_delivery_history(
        write_config: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Orthanc 1.10 with its default DicomAlwaysAllowEcho and no entry for our AE title: C-ECHO and the association
    succeed, the C-STORE is aborted. doctor sends no object: before any delivery it says that nothing proves the
    C-STORE; after the refused delivery it FAILs naming our AE title and the fix; once Orthanc knows us and
    ``deliver --retry --now`` delivered, it is OK with the delivery's time."""
    require_peer("orthanc")
    with OrthancPacs(tmp_path / "orthanc", always_allow_echo=True) as stranger_pacs:
        config = write_config(_destinations_yaml(("pacs", stranger_pacs.aet, stranger_pacs.dicom_port)))
        assert main(["doctor", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        assert _lines(out, "destination pacs:")[0].startswith("OK    destination pacs: C-ECHO answered"), out
        [store_line] = _lines(out, f"destination pacs C-STORE from {OUR_AE}:")
        assert store_line.startswith("SKIP") and "only a delivery does" in store_line, out
        assert "none is recorded yet" in store_line and f"register AE title '{OUR_AE}'" in store_line

        seg, seg_uid = _result_file(tmp_path / "results" / "seg")
        with JobStore(load_config(config).store_path) as store:
            store.mark_done("in::1.2.3", None, 1.0, deliveries=[DeliveryRequest("pacs", "seg", seg, seg_uid)])
        assert main(["deliver", "--now", "--config", str(config)]) == 19  # a real delivery, aborted by Orthanc
        out = capsys.readouterr().out
        assert "failed for good 1" in out and f"our AE title '{OUR_AE}'" in out, out
        assert stranger_pacs.count_instances() == 0

        assert main(["doctor", "--config", str(config)]) == 1
        out = capsys.readouterr().out
        [store_line] = _lines(out, f"destination pacs C-STORE from {OUR_AE}:")
        assert store_line.startswith("FAIL") and f"refused our AE title '{OUR_AE}'" in store_line, out
        assert "aborted the association at the C-STORE" in store_line and f"register AE title '{OUR_AE}'" in store_line
        assert "ago) is failed" in store_line and "edgeseg deliver --retry --now" in store_line
        assert out.rstrip().endswith(", 1 FAIL"), out

    with OrthancPacs(tmp_path / "orthanc2", modalities={"edgeseg": (OUR_AE, LOOPBACK, 11112)}) as pacs:
        config = write_config(_destinations_yaml(("pacs", pacs.aet, pacs.dicom_port)))
        assert main(["deliver", "--retry", "--now", "--config", str(config)]) == 0
        assert "sent 1, failed for good 0" in capsys.readouterr().out
        assert pacs.sop_instance_uids() == [seg_uid]
        assert main(["doctor", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        [store_line] = _lines(out, f"destination pacs C-STORE from {OUR_AE}:")
        assert store_line.startswith("OK") and f"accepted C-STORE from AE title '{OUR_AE}'" in store_line, out
        assert f"the last delivery sent was seg {seg_uid}, 0 s ago" in store_line


def _listener_yaml(port: int) -> str:
    return (f"dicom_listener:\n  enabled: true\n  bind_address: {LOOPBACK}\n  port: {port}\n"
            "  allowed_ae_titles: [CONSOLE]\n")


def test_doctor_listener_on_a_free_port(write_config: Callable[[str], Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    config = write_config(_listener_yaml(port))
    assert main(["doctor", "--config", str(config)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert f"OK    DICOM listener: EDGESEG@{LOOPBACK}:{port}, TLS no, allowed peers: AE titles CONSOLE" in out
    assert f"OK    DICOM listener port: {LOOPBACK}:{port} is free" in out
    [root] = _lines(out, "DICOM listener root:")
    assert root.startswith("OK") and str(tmp_path / "in") in root and "MB free (min_free_mb 500)" in root

    config = write_config(_listener_yaml(port) + "  min_free_mb: 1.0e+12\n")  # more than any disk has
    assert main(["doctor", "--config", str(config)]) == 1
    [root] = _lines(capsys.readouterr().out, "DICOM listener root:")
    assert root.startswith("FAIL") and "0xA700" in root and "min_free_mb" in root


def test_doctor_listener_port_taken(write_config: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind((LOOPBACK, 0))
        other.listen(1)
        port = other.getsockname()[1]
        config = write_config(_listener_yaml(port))
        assert main(["doctor", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    [line] = _lines(out, "DICOM listener port:")
    assert line.startswith(f"FAIL  DICOM listener port: {LOOPBACK}:{port} is taken by "), out
    assert f"pid {os.getpid()}" in line  # this test process holds it (Linux: read from /proc)
    assert "watcher is not running" in line and "choose another dicom_listener.port" in line


def test_doctor_listener_port_held_by_the_running_watcher(write_config: Callable[[str], Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    config_path = write_config(_listener_yaml(port))
    watcher = Watcher(load_config(config_path), FakeSegmenter(), settle_s=0.1)
    watcher.start()
    try:
        beat = load_config(config_path).state_dir / "watcher.json"
        deadline = time.monotonic() + 10
        while not beat.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert main(["doctor", "--config", str(config_path)]) == 0, capsys.readouterr().out
    finally:
        watcher.stop()
    [line] = _lines(capsys.readouterr().out, "DICOM listener port:")
    assert line.startswith(f"OK    DICOM listener port: {LOOPBACK}:{port} is in use by this state folder's watcher "
                           "(running (pid"), line


# ------------------------------------------------------------------------------------------------------- demo


def test_demo_dicom_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """The real demo bundle; the demo folder under tmp_path (kept), so the SEGs and SRs left there, the result's and
    the copies the local PACS received, are validated after the test (tests/conftest.py)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    started = time.monotonic()
    code = main(["-q", "demo", "--dicom", "--keep", "--timeout", "120", "--quiet-period", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert time.monotonic() - started < 120
    assert "Local PACS: DEMO_PACS@127.0.0.1:" in out
    assert "DICOM listener EDGESEG@127.0.0.1:" in out and "(accepts DEMO_CONSOLE)" in out
    assert "DICOM series of 20 instances from DEMO_CONSOLE to EDGESEG in one association" in out
    assert "SEG arrived at the local PACS" in out and "SR arrived at the local PACS" in out
    [demo] = [p for p in tmp_path.iterdir() if p.name.startswith("edgeseg-demo-")]
    received = sorted((demo / "pacs").rglob("*.dcm"))  # the local PACS is a StorageReceiver: <Study>/<Series>/<SOP>.dcm
    classes = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in received)
    assert classes == [SegmentationStorage, Comprehensive3DSRStorage]  # the default: a BINARY SEG
    [seg_result] = list((demo / "incoming").rglob("seg.dcm"))
    [seg_copy] = [p for p in received
                  if str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) == SegmentationStorage]
    assert pydicom.dcmread(seg_copy).PixelData == pydicom.dcmread(seg_result).PixelData
    # the series came in through the listener: <root>/<Study>/<Series>/<SOP>.dcm
    assert len(list((demo / "incoming").glob("*/*/*.dcm"))) == 20
