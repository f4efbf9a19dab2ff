"""The DICOM-peer harness (tests/helpers/dicom_peers.py) against the real programs: Orthanc, DCMTK, pynetdicom's apps.

These prove the harness the node's tests build on: Orthanc as a PACS that only accepts configured calling AEs and is
read back over REST, DCMTK's storescp as a receiver, and the SCUs of both toolkits. Every peer runs on 127.0.0.1 with
bounded timeouts. A missing DCMTK or Orthanc skips with a reason naming ``apt-get install dcmtk orthanc``; that skip
is not expected (tests/conftest.py), so the run fails: CI installs both (.ci/run).
"""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import RLELossless
from helpers import dicom_peers
from helpers.dicom_cases import small_volume
from helpers.dicom_peers import (
    LOOPBACK,
    DcmtkStorescp,
    OrthancPacs,
    dcmtk_echoscu,
    dcmtk_storescu,
    describe,
    pynetdicom_echoscu,
    pynetdicom_store_statuses,
    pynetdicom_storescu,
    require_peer,
)

from edgeseg.demo.dicom_series import write_dicom_series

RLE_LOSSLESS = RLELossless
SENDER = "EDGESEG"  # the calling AE title Orthanc is configured to accept
SENDER_PORT = 11112  # the port of its DicomModalities entry (Orthanc never calls it in these tests)


@pytest.fixture()
def mr_files(tmp_path: Path) -> list[Path]:
    """Three 64x64 MR Image Storage files of one series (explicit VR little endian, fresh UIDs), the last of them
    re-encoded as RLE Lossless (a compressed file must travel as it is)."""
    files = write_dicom_series(small_volume(3, shape=(64, 64)), tmp_path / "mr", series_description="peer test")
    ds = pydicom.dcmread(files[-1])
    ds.compress(RLE_LOSSLESS)
    ds.save_as(files[-1], enforce_file_format=True)
    return files


def _sop_uids(files: list[Path]) -> list[str]:
    return sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)


def _pacs(tmp_path: Path, **kwargs: object) -> OrthancPacs:
    require_peer("orthanc")
    return OrthancPacs(tmp_path / "orthanc", modalities={"edgeseg": (SENDER, LOOPBACK, SENDER_PORT)},
                       **kwargs)


def test_orthanc_receives_from_dcmtk_storescu_and_lists_over_rest(tmp_path: Path, mr_files: list[Path]) -> None:
    require_peer("storescu")
    with _pacs(tmp_path) as pacs:
        assert pacs.count_instances() == 0
        proc = dcmtk_storescu(pacs.host, pacs.dicom_port, mr_files, calling_aet=SENDER, called_aet=pacs.aet)
        assert proc.returncode == 0, describe(proc) + pacs.log()

        # Orthanc indexes before it answers the C-STORE: everything is visible at once.
        assert pacs.count_instances() == 3
        assert pacs.sop_instance_uids() == _sop_uids(mr_files)
        source = pydicom.dcmread(mr_files[0], stop_before_pixels=True)
        assert pacs.series_uids() == [source.SeriesInstanceUID]
        [study] = pacs.studies()
        assert study["MainDicomTags"]["StudyInstanceUID"] == source.StudyInstanceUID
        assert study["PatientMainDicomTags"]["PatientID"] == source.PatientID

        instances = pacs.instances(source.SeriesInstanceUID)
        assert sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in instances) == _sop_uids(mr_files)
        assert pacs.instances("1.2.3.4.5.6.7.8.9") == []  # /tools/find matches the series UID exactly
        by_uid = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in instances}
        for path in mr_files:
            ds = pydicom.dcmread(path)
            orthanc_id = by_uid[ds.SOPInstanceUID]
            tags = pacs.instance_tags(orthanc_id)
            assert tags["SeriesInstanceUID"] == ds.SeriesInstanceUID and tags["Modality"] == "MR"
            assert (tags["Rows"], tags["Columns"]) == ("64", "64")
            assert tags["PixelData"] is None  # values over 256 bytes are not in the JSON tags
            assert pacs.instance_metadata(orthanc_id, "RemoteAET") == SENDER
            assert pacs.instance_metadata(orthanc_id, "CalledAET") == pacs.aet
            # storescu proposed the file's own transfer syntax: the RLE file is stored compressed, as sent
            assert pacs.instance_metadata(orthanc_id, "TransferSyntax") == ds.file_meta.TransferSyntaxUID
            stored = pydicom.dcmread(io.BytesIO(pacs.instance_file(orthanc_id)))
            assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
            assert stored.PixelData == ds.PixelData
        assert {pacs.instance_metadata(i, "TransferSyntax") for i in by_uid.values()} >= {RLE_LOSSLESS}


@pytest.mark.parametrize("always_allow_echo", [False, True], ids=["strict", "echo-from-anyone"])
def test_orthanc_refuses_a_calling_ae_it_does_not_know(tmp_path: Path, mr_files: list[Path],
                                                       always_allow_echo: bool) -> None:
    """strict (the harness's default): Orthanc rejects the association ("Calling AE Title Not Recognized").
    echo-from-anyone (Orthanc's own default, DicomAlwaysAllowEcho true): the association is accepted and the
    C-STORE is answered with an A-ABORT, not a failure status. Either way nothing is stored."""
    require_peer("storescu")
    with _pacs(tmp_path, always_allow_echo=always_allow_echo) as pacs:
        proc = dcmtk_storescu(pacs.host, pacs.dicom_port, mr_files, calling_aet="INTRUDER", called_aet=pacs.aet)
        assert proc.returncode != 0, describe(proc)
        if always_allow_echo:
            assert "Association Accepted" in proc.stderr and "Peer aborted Association" in proc.stderr, \
                describe(proc)
            assert 'AET is not listed in configuration option "DicomModalities"' in pacs.log()
        else:
            assert "Calling AE Title Not Recognized" in proc.stderr, describe(proc)

        # timeout: after Orthanc's A-ABORT the app waits out its DIMSE timeout (0.75 x timeout) before exiting
        app = pynetdicom_storescu(pacs.host, pacs.dicom_port, mr_files, calling_aet="INTRUDER",
                                  called_aet=pacs.aet, timeout=5)
        assert pynetdicom_store_statuses(app) == [], describe(app)
        # the app's exit status: 1 when the association is rejected, 0 (!) when the store is aborted
        assert app.returncode == (0 if always_allow_echo else 1), describe(app)

        # a known calling AE with the wrong called AE title is refused too (DicomCheckCalledAet)
        wrong = dcmtk_storescu(pacs.host, pacs.dicom_port, mr_files, calling_aet=SENDER, called_aet="NOT-PACS")
        assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stderr, describe(wrong)

        assert pacs.count_instances() == 0
        assert pacs.studies() == [] and pacs.sop_instance_uids() == []


def test_dcmtk_storescp_receives_from_pynetdicom_storescu(tmp_path: Path, mr_files: list[Path]) -> None:
    require_peer("storescp")
    require_peer("pynetdicom")
    with DcmtkStorescp(tmp_path / "received", aet="STORESCP") as scp:
        proc = pynetdicom_storescu(scp.host, scp.port, mr_files, calling_aet="ANYONE", called_aet=scp.aet)
        assert proc.returncode == 0, describe(proc) + scp.log()
        assert pynetdicom_store_statuses(proc) == [0x0000] * 3, describe(proc)
        received = scp.wait_for(3)
    assert scp.sop_instance_uids() == _sop_uids(mr_files)
    by_uid = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in received}
    for path in mr_files:
        sent = pydicom.dcmread(path)
        got = pydicom.dcmread(by_uid[sent.SOPInstanceUID])
        assert by_uid[sent.SOPInstanceUID].name == f"MR.{sent.SOPInstanceUID}.dcm"  # SOP-UID file names
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID  # RLE stays RLE (+xa, -cx)
        assert got.PixelData == sent.PixelData and got.SeriesInstanceUID == sent.SeriesInstanceUID


def test_echoscu_of_both_toolkits_against_orthanc(tmp_path: Path) -> None:
    require_peer("echoscu")
    require_peer("pynetdicom")
    with _pacs(tmp_path) as pacs:
        dcmtk_ok = dcmtk_echoscu(pacs.host, pacs.dicom_port, calling_aet=SENDER, called_aet=pacs.aet)
        assert dcmtk_ok.returncode == 0 and "Received Echo Response (Success)" in dcmtk_ok.stderr, \
            describe(dcmtk_ok)
        app_ok = pynetdicom_echoscu(pacs.host, pacs.dicom_port, calling_aet=SENDER, called_aet=pacs.aet)
        assert app_ok.returncode == 0 and "Received Echo Response (Status: 0x0000 - Success)" in app_ok.stderr, \
            describe(app_ok)

        # strict Orthanc: an unknown AE cannot even echo
        dcmtk_refused = dcmtk_echoscu(pacs.host, pacs.dicom_port, calling_aet="INTRUDER", called_aet=pacs.aet)
        assert dcmtk_refused.returncode != 0 and "Calling AE Title Not Recognized" in dcmtk_refused.stderr, \
            describe(dcmtk_refused)
        app_refused = pynetdicom_echoscu(pacs.host, pacs.dicom_port, calling_aet="INTRUDER", called_aet=pacs.aet)
        assert app_refused.returncode == 1 and "Calling AE title not recognised" in app_refused.stderr, \
            describe(app_refused)


def test_free_ports_lie_below_the_ephemeral_range_where_no_outgoing_connection_takes_them() -> None:
    """CI once lost Orthanc's DICOM port to an outgoing connection between free_port() and Orthanc's bind: the ports
    the servers get are outside the range the OS hands to outgoing connections, differ, and can be listened on."""
    import socket

    low, _ = dicom_peers.ephemeral_port_range()
    ports = {dicom_peers.free_port() for _ in range(20)}
    assert all(1024 < port < low for port in ports), (sorted(ports), low)
    assert len(ports) > 1
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind((LOOPBACK, ports.pop()))
        server.listen(1)


def test_orthanc_starts_on_another_http_port_when_its_own_was_taken(tmp_path: Path) -> None:
    """free_port()'s race, forced: the HTTP port is taken between the choice and Orthanc's bind (by a listener
    outside the tests); the helper restarts Orthanc on another HTTP port, keeping the DICOM port that tests hand to
    edgeseg before entering."""
    import socket

    pacs = _pacs(tmp_path)
    taken, dicom_port = pacs.http_port, pacs.dicom_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind((LOOPBACK, taken))
        blocker.listen(1)
        with pacs:
            assert pacs.http_port != taken and pacs.dicom_port == dicom_port
            echo = pynetdicom_echoscu(pacs.host, pacs.dicom_port, calling_aet=SENDER, called_aet=pacs.aet)
            assert echo.returncode == 0, describe(echo)


def _expected_skips() -> tuple[str, ...]:
    conftest = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("_edgeseg_root_conftest_peers", conftest)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.EXPECTED_SKIPS)


@pytest.mark.parametrize("peer", ["storescu", "storescp", "echoscu", "orthanc"])
def test_a_missing_peer_skips_loudly_and_unexpectedly(peer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the tool the test is skipped with the install command, and the skip-gate counts it as unexpected."""
    monkeypatch.setattr(dicom_peers, "peer_executable", lambda name: None)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_peer(peer)
    reason = str(skipped.value)
    assert "apt-get install dcmtk orthanc" in reason and peer in reason.lower()
    assert not any(expected in reason for expected in _expected_skips()), reason
