"""The Storage SCP against real senders: DCMTK's and pynetdicom's storescu/echoscu, and pynetdicom in-process.

Every acknowledged instance is on disk under ``<root>/<Study>/<Series>/<SOP>.dcm`` with the pixels that were sent;
refused peers and hostile UIDs store nothing; a full disk answers 0xA7xx and leaves nothing partial.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

import pytest
from pydicom.uid import JPEGLosslessSV1
from node_helpers import CONSOLE, LISTENER_AE, Listener, make_certificates, mr_series, same_instance, stored_path
from helpers.dicom_peers import (LOOPBACK, dcmtk_echoscu, dcmtk_storescu, describe, pynetdicom_echoscu,
                                 pynetdicom_store_statuses, pynetdicom_storescu)

from edgeseg.runtime.node import receive
from edgeseg.runtime.node.receive import AssociationEnded, Stored


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _send_in_process(port: int, datasets: list, calling: str = CONSOLE, called: str = LISTENER_AE) -> list[int]:
    """C-STORE ``datasets`` with a pynetdicom AE in this process; the statuses (None: none came back)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate(LOOPBACK, port, ae_title=called)
    assert assoc.is_established, "the listener refused an allowed peer"
    try:
        out = []
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            out.append(int(rsp.Status) if rsp is not None and "Status" in rsp else None)
        return out
    finally:
        assoc.release()


@pytest.mark.parametrize("sender", ["dcmtk", "pynetdicom"])
def test_console_tools_store_every_instance_under_its_uids(tmp_path: Path, listener: Listener, sender: str) -> None:
    files = mr_series(tmp_path / "series", n=5)
    if sender == "dcmtk":
        proc = dcmtk_storescu(LOOPBACK, listener.port, files, calling_aet=CONSOLE, called_aet=LISTENER_AE)
        assert proc.returncode == 0, describe(proc)
    else:
        proc = pynetdicom_storescu(LOOPBACK, listener.port, files, calling_aet=CONSOLE, called_aet=LISTENER_AE)
        assert proc.returncode == 0 and pynetdicom_store_statuses(proc) == [0] * 5, describe(proc)
    root = listener.receiver.root
    for f in files:
        target = stored_path(root, f)
        assert target.is_file(), f"{target} missing"
        assert same_instance(f, target)
    assert len(_all_files(root)) == 5, "no temporaries or extra files are left"
    stored = [e for e in listener.events if isinstance(e, Stored)]
    assert sorted(e.path for e in stored) == sorted(stored_path(root, f) for f in files)
    listener.receiver.stop()  # the association has ended by now; stop() only makes the events final
    ended = [e for e in listener.events if isinstance(e, AssociationEnded)]
    assert len(ended) == 1 and ended[0].stored == 5 and ended[0].folders == (stored_path(root, files[0]).parent,)


def test_compressed_instances_are_stored_as_sent(tmp_path: Path, listener: Listener) -> None:
    from helpers.scanner_dicom import encode_series
    from pydicom import dcmread

    files = encode_series(mr_series(tmp_path / "series", n=3), tmp_path / "jpeg", "jpeg_lossless_sv1")
    proc = dcmtk_storescu(LOOPBACK, listener.port, files, calling_aet=CONSOLE, called_aet=LISTENER_AE)
    assert proc.returncode == 0, describe(proc)
    for f in files:
        target = stored_path(listener.receiver.root, f)
        assert dcmread(target).file_meta.TransferSyntaxUID == JPEGLosslessSV1
        assert same_instance(f, target)


def test_echo_from_both_tool_sets(listener: Listener) -> None:
    for proc in (dcmtk_echoscu(LOOPBACK, listener.port, calling_aet=CONSOLE, called_aet=LISTENER_AE),
                 pynetdicom_echoscu(LOOPBACK, listener.port, calling_aet=CONSOLE, called_aet=LISTENER_AE)):
        assert proc.returncode == 0, describe(proc)


def test_refused_peers_cannot_store_anything(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = mr_series(tmp_path / "series", n=2)
    # a host not in allowed_hosts: closed at accept, before a byte is read (even with the console's AE titles)
    lst = Listener(tmp_path / "root", allowed_hosts=("10.77.0.0/16",))
    with lst.receiver:
        for calling, called in ((CONSOLE, LISTENER_AE), ("INTRUDER", LISTENER_AE)):
            proc = dcmtk_storescu(LOOPBACK, lst.port, files, calling_aet=calling, called_aet=called)
            assert proc.returncode != 0, f"the store was accepted\n{describe(proc)}"
        server = lst.receiver._server
        assert server is not None and server.stats["refused"] == 2 and lst.receiver.stats["stored"] == 0
    closed = [r.getMessage() for r in caplog.records if "connection refused" in r.getMessage()]
    assert "DICOM refusals suppressed: host=127.0.0.1 count=1" in caplog.text  # same host, same reason
    assert len(closed) == 1 and all("host=127.0.0.1" in m and "host 127.0.0.1 is not in dicom_listener.allowed_hosts"
                                    in m for m in closed), closed
    # an allowed host: AE titles are checked at the A-ASSOCIATE-RQ, refused with A-ASSOCIATE-RJ
    caplog.clear()
    lst = Listener(tmp_path / "root", allowed_hosts=(LOOPBACK,))
    with lst.receiver:
        for what, calling, called in (("unknown calling AE title", "INTRUDER", LISTENER_AE),
                                      ("wrong called AE title", CONSOLE, "OTHER")):
            proc = dcmtk_storescu(LOOPBACK, lst.port, files, calling_aet=calling, called_aet=called)
            assert proc.returncode != 0, f"{what}: the store was accepted\n{describe(proc)}"
            assert "Association Rejected" in proc.stdout + proc.stderr, describe(proc)
        proc = pynetdicom_storescu(LOOPBACK, lst.port, files, calling_aet="INTRUDER", called_aet=LISTENER_AE)
        assert proc.returncode != 0
        assert lst.receiver.stats["refused"] == 3 and lst.receiver.stats["stored"] == 0
    assert _all_files(tmp_path / "root") == []
    reasons = [r.getMessage() for r in caplog.records if "association refused" in r.getMessage()]
    assert len(reasons) == 2, reasons  # the first of each reason, with the address and both AE titles
    assert "DICOM refusals suppressed: host=127.0.0.1 count=1" in caplog.text  # INTRUDER's second, at stop
    assert all("host=127.0.0.1" in m for m in reasons)
    assert any("calling_ae=INTRUDER called_ae=EDGESEG" in m and "'INTRUDER'" in m for m in reasons)
    assert any("'OTHER' is not ours" in m for m in reasons)


@pytest.mark.parametrize("attribute, value", [
    ("SeriesInstanceUID", "../../../escaped"),
    ("StudyInstanceUID", "1.2.3/../../x"),
    ("SeriesInstanceUID", ""),
    ("StudyInstanceUID", "1." + "2" * 70),
])
def test_hostile_or_missing_uids_never_name_a_path(tmp_path: Path, listener: Listener, attribute: str,
                                                    value: str) -> None:
    from pydicom import dcmread

    ds = dcmread(mr_series(tmp_path / "series", n=1)[0])
    setattr(ds, attribute, value)
    before = set(tmp_path.rglob("*"))
    assert _send_in_process(listener.port, [ds]) == [receive.CANNOT_UNDERSTAND]
    assert set(tmp_path.rglob("*")) - before == set(), "nothing was written anywhere"


@pytest.mark.parametrize("where", ["copy", "link", "fsync"])
def test_full_disk_answers_out_of_resources_and_leaves_nothing(tmp_path: Path, listener: Listener,
                                                               monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The disk fills while an instance is put in place: copied (a root on another file system than the received
    file: the link fails with EXDEV), linked, or at the fsync of the linked file."""
    from pydicom import dcmread

    files = mr_series(tmp_path / "series", n=3)
    datasets = [dcmread(f) for f in files]

    def disk_full(src: object, dst: object, length: int = 0) -> None:
        os.write(dst.fileno(), b"\0" * 100)  # type: ignore[attr-defined] - a part was written, then the disk filled
        raise OSError(errno.ENOSPC, "No space left on device")

    def fails(code: int) -> Callable[..., None]:
        def fail(*args: object) -> None:
            raise OSError(code, os.strerror(code))
        return fail

    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.islink(f"/proc/self/fd/{fd}") and ".recv-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    if where == "copy":
        monkeypatch.setattr(receive.os, "link", fails(errno.EXDEV))
        monkeypatch.setattr(receive.shutil, "copyfileobj", disk_full)
    elif where == "link":
        monkeypatch.setattr(receive.os, "link", fails(errno.ENOSPC))
        monkeypatch.setattr(receive.shutil, "copyfileobj", disk_full)  # never reached: the link's ENOSPC is final
    else:
        monkeypatch.setattr(receive.os, "fsync", fsync)
    assert _send_in_process(listener.port, datasets) == [receive.OUT_OF_RESOURCES] * 3
    assert _all_files(listener.receiver.root) == [], "no partial file, no temporary"
    monkeypatch.undo()
    # the console keeps the images and retries: now they are stored
    assert _send_in_process(listener.port, datasets) == [0, 0, 0]
    assert all(same_instance(f, stored_path(listener.receiver.root, f)) for f in files)


def test_min_free_space_is_kept(tmp_path: Path) -> None:
    from pydicom import dcmread

    lst = Listener(tmp_path / "root", min_free_mb=1e12)  # more than any disk has
    with lst.receiver:
        ds = dcmread(mr_series(tmp_path / "series", n=1)[0])
        assert _send_in_process(lst.port, [ds]) == [receive.OUT_OF_RESOURCES]
    assert _all_files(tmp_path / "root") == []


def test_unwritable_root_answers_out_of_resources(tmp_path: Path) -> None:
    from pydicom import dcmread

    blocker = tmp_path / "root"
    blocker.mkdir()
    ds = dcmread(mr_series(tmp_path / "series", n=1)[0])
    (blocker / ds.StudyInstanceUID).write_text("a file where the study folder should be")
    lst = Listener(blocker)
    with lst.receiver:
        assert _send_in_process(lst.port, [ds]) == [receive.OUT_OF_RESOURCES]
    assert sorted(p.name for p in blocker.iterdir()) == [".edgeseg-incoming", ds.StudyInstanceUID]
    assert list((blocker / ".edgeseg-incoming").iterdir()) == []  # the streamed dataset is gone with the store


def test_a_second_copy_of_an_instance_replaces_the_first(tmp_path: Path, listener: Listener) -> None:
    from pydicom import dcmread

    f = mr_series(tmp_path / "series", n=1)[0]
    first, second = dcmread(f), dcmread(f)
    arr = second.pixel_array.copy()
    arr[0, 0] = 4321
    second.PixelData = arr.tobytes()
    assert _send_in_process(listener.port, [first]) == [0]
    assert _send_in_process(listener.port, [second]) == [0]
    target = stored_path(listener.receiver.root, f)
    assert dcmread(target).pixel_array[0, 0] == 4321
    assert len(_all_files(listener.receiver.root)) == 1


def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    from edgeseg.runtime.node.send import echo, send_files
    from edgeseg.runtime.node.settings import Destination, TlsSettings

    certs = make_certificates(tmp_path / "certs")
    files = mr_series(tmp_path / "series", n=2)
    server_tls = TlsSettings(certs["server_cert"], certs["server_key"], certs["ca"], require_peer_certificate=True)
    lst = Listener(tmp_path / "root", tls=server_tls)
    with lst.receiver:
        def dest(tls: TlsSettings | None) -> Destination:
            return Destination("edgeseg", LISTENER_AE, LOOPBACK, lst.port, tls=tls, timeout_s=5)

        with_cert = TlsSettings(certs["client_cert"], certs["client_key"], certs["ca"])
        ok, why = echo(dest(with_cert), CONSOLE)
        assert ok, why
        outcomes = send_files(dest(with_cert), files, CONSOLE)
        assert all(o.ok for o in outcomes), [o.message for o in outcomes]
        ok, why = echo(dest(TlsSettings(ca=certs["ca"])), CONSOLE)  # no client certificate: refused
        assert not ok
        ok, why = echo(dest(None), CONSOLE)  # plain DICOM to a TLS port: no association
        assert not ok
    assert all(same_instance(f, stored_path(tmp_path / "root", f)) for f in files)
    assert len(_all_files(tmp_path / "root")) == 2
