"""The listener against hosts that are not consoles (issue 18): sockets from a second loopback address (127.0.0.2)
that stay idle, flood before any association, open TLS and never finish the handshake, or trickle bytes. The console
(127.0.0.1) is served meanwhile; memory stays bounded; the listener stops within seconds whatever they do; each
refusal is logged with the address, the first of each reason per peer in full and the rest in one summary line per
peer and minute (a flood cannot spam the log). Every socket is bounded in count and time."""
from __future__ import annotations

import logging
import re
import socket
import struct
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from node_helpers import CONSOLE, LISTENER_AE, Listener, make_certificates, mr_series

from edgeseg.runtime.node import guard
from edgeseg.runtime.node.send import echo
from edgeseg.runtime.node.settings import Destination, TlsSettings

STRANGER = "127.0.0.2"
LOOPBACK = "127.0.0.1"


def _stranger_sockets(port: int, n: int, host: str = STRANGER) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((host, 0))
        s.settimeout(5)
        s.connect((LOOPBACK, port))
        out.append(s)
    return out


def _closed_by_peer(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _console_echo(port: int, tls: TlsSettings | None = None) -> tuple[bool, float]:
    dest = Destination(name="edgeseg", ae_title=LISTENER_AE, host=LOOPBACK, port=port, tls=tls, timeout_s=5)
    t0 = time.monotonic()
    ok, _ = echo(dest, CONSOLE)
    return ok, time.monotonic() - t0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _suppressed(caplog: pytest.LogCaptureFixture, host: str = STRANGER) -> list[int]:
    """The counts of the summary lines of ``host``'s suppressed refusals."""
    return [int(m.group(1)) for r in caplog.records
            for m in [re.search(rf"DICOM refusals suppressed: host={re.escape(host)} count=(\d+)", r.getMessage())]
            if m is not None]


@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def test_a_stranger_by_address_is_closed_at_accept_and_the_console_is_served(
        tmp_path: Path, closing: list[socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    lst = Listener(tmp_path / "root", allowed_hosts=(LOOPBACK,))
    with lst.receiver:
        socks = _stranger_sockets(lst.port, 8)
        closing.extend(socks)
        assert all(_closed_by_peer(s, 2.0) for s in socks)  # closed at once, nothing read
        ok, took = _console_echo(lst.port)
        assert ok and took < 2.0, took
    refusals = [r.getMessage() for r in caplog.records if "connection refused" in r.getMessage()]
    assert len(refusals) == 1 and all(f"host={STRANGER}" in m and "not in dicom_listener.allowed_hosts" in m
                                      for m in refusals), refusals
    assert _suppressed(caplog) == [7]  # the other 7, summarized when the listener stopped


def test_idle_sockets_of_one_host_cannot_take_every_slot(tmp_path: Path, closing: list[socket.socket],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """No host list (AE titles only): a host may hold max_associations_per_host connections; 8 idle sockets from a
    stranger leave the console its slots, and the ones held are dropped by the ARTIM timer."""
    lst = Listener(tmp_path / "root", max_associations=4, max_associations_per_host=2)
    with lst.receiver:
        t0 = time.monotonic()
        socks = _stranger_sockets(lst.port, 8)
        closing.extend(socks)
        time.sleep(0.3)
        ok, took = _console_echo(lst.port)
        assert ok and took < 2.0, f"console served in {took:.2f} s with 8 stranger sockets open"
        held = [s for s in socks if not _closed_by_peer(s, 0.2)]
        assert len(held) == 2, len(held)
        assert all(_closed_by_peer(s, guard.ARTIM_S + 5 - (time.monotonic() - t0)) for s in held)
        assert time.monotonic() - t0 < guard.ARTIM_S + 5
    refusals = [r.getMessage() for r in caplog.records if "connection refused" in r.getMessage()]
    assert len(refusals) == 1 and all("max_associations_per_host 2" in m for m in refusals), refusals
    assert _suppressed(caplog) == [5]


def test_a_pre_association_flood_is_cut_before_memory_grows(tmp_path: Path, closing: list[socket.socket],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Three connections each announce a 4 GB A-ASSOCIATE-RQ and stream garbage: each is closed when the length is
    read; the process's RSS does not grow by more than a few MB."""
    lst = Listener(tmp_path / "root", max_associations_per_host=4)
    with lst.receiver:
        before = _rss_mb()
        socks = _stranger_sockets(lst.port, 3)
        closing.extend(socks)
        junk = b"\0" * (1 << 16)
        for s in socks:
            s.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))
        sent = 0
        for _ in range(64):  # at most 4 MB each: the listener has closed them long before
            for s in socks:
                try:
                    s.sendall(junk)
                    sent += len(junk)
                except OSError:
                    pass
        assert all(_closed_by_peer(s, 5.0) for s in socks)
        grew = _rss_mb() - before
        ok, _ = _console_echo(lst.port)
        assert ok
    assert grew < 50, f"RSS grew by {grew:.0f} MB"
    refusals = [r.getMessage() for r in caplog.records if "connection refused" in r.getMessage()]
    assert len(refusals) == 1 and all("a PDU of 4294967280 bytes announced" in m and f"host={STRANGER}" in m
                                      for m in refusals), refusals
    assert _suppressed(caplog) == [2] and "reasons=PDU too long x2" in caplog.text


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "connection refused" in r.getMessage()]


def test_tls_half_open_strangers_do_not_block_the_tls_listener(tmp_path: Path, closing: list[socket.socket],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    certs = make_certificates(tmp_path / "certs")
    server_tls = TlsSettings(certificate=certs["server_cert"], key=certs["server_key"])
    lst = Listener(tmp_path / "root", tls=server_tls, max_associations_per_host=3)
    old = guard.TLS_HANDSHAKE_S
    guard.TLS_HANDSHAKE_S = 2.0
    try:
        with lst.receiver:
            socks = _stranger_sockets(lst.port, 3)  # TCP open, no ClientHello: a half-open TLS peer
            closing.extend(socks)
            ok, took = _console_echo(lst.port, TlsSettings(ca=certs["ca"]))
            assert ok and took < 2.0, took
            assert all(_closed_by_peer(s, 5.0) for s in socks)  # the handshake deadline ends them
            # a handshake thread counts its refusal right after closing the socket: wait for the three
            server = lst.receiver._server
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and server.stats["refused"] < 3:
                time.sleep(0.05)
            t0 = time.monotonic()
        stop_s = time.monotonic() - t0
    finally:
        guard.TLS_HANDSHAKE_S = old
    assert stop_s < 3.0
    refusals = _refusals(caplog)
    assert len(refusals) == 1 and all("no TLS handshake within 2 s" in m and f"host={STRANGER}" in m
                                      for m in refusals), refusals
    assert _suppressed(caplog) == [2] and "reasons=TLS handshake timed out x2" in caplog.text


def test_a_trickling_peer_is_cut_and_stop_does_not_wait_for_peers(tmp_path: Path, closing: list[socket.socket],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    lst = Listener(tmp_path / "root", max_associations_per_host=4)
    old = guard.PDU_TIMEOUT_S
    guard.PDU_TIMEOUT_S = 2.0
    try:
        lst.receiver.start()
        trickler, idle = _stranger_sockets(lst.port, 2)
        closing.extend([trickler, idle])
        trickler.sendall(struct.pack(">BBL", 0x01, 0, 200))  # an A-ASSOCIATE-RQ of 200 bytes ...
        t0 = time.monotonic()
        cut = False
        while time.monotonic() - t0 < 6:  # ... of which a byte every 0.5 s arrives
            try:
                trickler.sendall(b"\0")
            except OSError:
                cut = True
                break
            if _closed_by_peer(trickler, 0.5):
                cut = True
                break
        assert cut and time.monotonic() - t0 < 4.0
        # stop with a peer still connected (idle) and another trickling: no peer delays it
        late = _stranger_sockets(lst.port, 1)[0]
        closing.append(late)
        late.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\0")
        t0 = time.monotonic()
        lst.receiver.stop()
        assert time.monotonic() - t0 < 3.0
        assert _closed_by_peer(late, 2.0) and _closed_by_peer(idle, 2.0)
    finally:
        guard.PDU_TIMEOUT_S = old
        if lst.receiver._server is not None:
            lst.receiver.stop()
    refusals = [r.getMessage() for r in caplog.records if "connection refused" in r.getMessage()]
    assert any("a PDU did not arrive within 2 s" in m and f"host={STRANGER}" in m for m in refusals), refusals


def test_a_flood_of_refused_connections_is_one_line_and_a_summary_per_peer_and_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A stranger reconnecting in a loop for ~3 windows (shortened to 1 s) leaves one full refusal line and at most
    one summary per window, whose counts add up to every other refusal; the console's own refusal (an AE title we do
    not know, from 127.0.0.1) is still logged in full: the limit is per peer."""
    monkeypatch.setattr(guard, "REFUSAL_SUMMARY_S", 1.0)
    lst = Listener(tmp_path / "root", allowed_hosts=(LOOPBACK,))
    caplog.set_level(logging.INFO)
    with lst.receiver:
        server = lst.receiver._server
        n = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.2:
            [s] = _stranger_sockets(lst.port, 1)
            s.close()
            n += 1
        deadline = time.monotonic() + 10
        while server.stats["refused"] < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.stats["refused"] == n and n >= 50, n
        dest = Destination(name="x", ae_title=LISTENER_AE, host=LOOPBACK, port=lst.port, timeout_s=5)
        assert not echo(dest, "INTRUDER")[0]
        ok, _ = _console_echo(lst.port)
        assert ok
    full = [r.getMessage() for r in caplog.records if "connection refused" in r.getMessage()]
    assert len(full) == 1 and f"host={STRANGER}" in full[0], full
    counts = _suppressed(caplog)
    assert sum(counts) == n - 1, (counts, n)
    assert 2 <= len(counts) <= 5, counts  # one per window that ended (~3), and the rest when it stopped
    summaries = [r for r in caplog.records if "refusals suppressed" in r.getMessage()]
    assert all(r.levelno == logging.WARNING and "host not allowed x" in r.getMessage() for r in summaries)
    gaps = [b.created - a.created for a, b in zip(summaries, summaries[1:-1])]
    assert all(g >= 0.9 for g in gaps), gaps  # at most one per window while the flood goes on
    console = [r.getMessage() for r in caplog.records if "association refused" in r.getMessage()]
    assert len(console) == 1 and "calling_ae=INTRUDER" in console[0] and f"host={LOOPBACK}" in console[0]


def test_refusal_log_windows() -> None:
    """RefusalLog with a clock of its own: first line of each reason, then one summary per window; a quiet window
    ends silently and the next refusal is logged in full again; a crowd of addresses stays bounded."""
    now = [0.0]
    refusals = guard.RefusalLog(clock=lambda: now[0])
    assert refusals.refused("connection", "10.0.0.9", 1, "why", "a")
    assert refusals.refused("connection", "10.0.0.9", 2, "why b", "b")
    assert not refusals.refused("connection", "10.0.0.9", 3, "why", "a")
    assert refusals.refused("connection", "10.0.0.8", 3, "why", "a")  # another peer: its own line
    now[0] = 30.0
    assert not refusals.refused("connection", "10.0.0.9", 4, "why", "a")
    now[0] = 61.0
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    guard.log.addHandler(handler)
    try:
        refusals.flush()
        assert len(lines) == 1 and "host=10.0.0.9 count=2 within_s=61 reasons=a x2" in lines[0], lines
        now[0] = 122.0  # a window with nothing suppressed ends silently
        refusals.flush()
        assert len(lines) == 1
        assert refusals.refused("connection", "10.0.0.9", 5, "why", "a")  # logged in full again
        for i in range(guard.REFUSAL_PEERS_MAX + 5):
            refusals.refused("connection", f"10.1.{i // 256}.{i % 256}", 1, "why", "a")
        assert len(refusals._peers) <= guard.REFUSAL_PEERS_MAX
    finally:
        guard.log.removeHandler(handler)


def test_received_datasets_stream_inside_the_root_never_the_system_temp(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.dicom_peers import dcmtk_storescu, describe

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    from edgeseg.runtime.node import receive

    def no_copy(*args: object) -> None:
        raise AssertionError("copied: the received file is on the root's file system, it is linked")

    monkeypatch.setattr(receive.shutil, "copyfileobj", no_copy)
    files = mr_series(tmp_path / "series", n=3)
    lst = Listener(tmp_path / "root")
    with lst.receiver:
        proc = dcmtk_storescu(LOOPBACK, lst.port, files, calling_aet=CONSOLE, called_aet=LISTENER_AE)
        assert proc.returncode == 0, describe(proc)
    assert list(system_tmp.iterdir()) == []
    assert list((tmp_path / "root" / guard.INCOMING_DIR).iterdir()) == []
    stored = list((tmp_path / "root").glob("*/*/*.dcm"))
    assert len(stored) == 3
    # linked into place, not copied: one name left once pynetdicom removed its own, and the permissions any new
    # file gets here (pynetdicom creates its file 0600)
    probe = tmp_path / "root" / "probe"
    probe.write_bytes(b"")
    assert {(p.stat().st_nlink, p.stat().st_mode & 0o777) for p in stored} == {(1, probe.stat().st_mode & 0o777)}


def test_another_patient_under_a_stored_sop_instance_uid_is_kept_aside(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    from helpers.dicom_peers import dcmtk_storescu, describe
    from pydicom import dcmread

    [f] = mr_series(tmp_path / "series", n=1)
    other = tmp_path / "other.dcm"
    ds = dcmread(f)
    ds.PatientID, ds.PatientName = "SOMEONE-ELSE", "Else^Someone"
    ds.save_as(other)
    lst = Listener(tmp_path / "root")
    caplog.set_level(logging.INFO)
    with lst.receiver:
        for path in (f, other):
            proc = dcmtk_storescu(LOOPBACK, lst.port, [path], calling_aet=CONSOLE, called_aet=LISTENER_AE)
            assert proc.returncode == 0, describe(proc)
    [stored] = list((tmp_path / "root").glob("*/*/*.dcm"))
    assert dcmread(stored).PatientID == dcmread(f).PatientID  # the first stays
    [aside] = [p for p in (tmp_path / "root" / ".edgeseg-conflicts").rglob("*") if p.is_file()]
    assert dcmread(aside).PatientID == "SOMEONE-ELSE"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "kept aside" in r.getMessage()]
    assert len(warnings) == 1 and "PatientID, PatientName differ" in warnings[0].getMessage()
    assert "SOMEONE-ELSE" not in warnings[0].getMessage()  # no patient data in the log
