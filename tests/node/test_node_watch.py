"""The watcher as a DICOM node, end to end: a console sends a series by C-STORE (DCMTK storescu), edgeseg segments
it with the demo bundle and delivers the DICOM-SEG and the SR to a real PACS (Orthanc), read back over REST.
Also: completion from the listener's hints (series split over associations, late instances), load (1000 images
over one association while three other consoles send), retries until the PACS is up, and a PACS that refuses for
good.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from node_helpers import CONSOLE, LISTENER_AE, mr_series
from helpers.dicom_peers import LOOPBACK, DcmtkStorescp, OrthancPacs, dcmtk_storescu, describe, free_port, require_peer

import edgeseg.demo
from edgeseg.demo.dicom_series import write_dicom_series
from edgeseg.runtime.watch.config import load_config
from edgeseg.runtime.watch.service import Watcher
from edgeseg.runtime.watch.store import SENT

QUIET_S = 300.0  # far longer than any test: a series completes only through the listener's hints


def node_config(tmp_path: Path, *, destinations: list[dict[str, Any]] | None = None, **more: Any) -> Any:
    overrides: dict[str, Any] = {
        "roots": [str(tmp_path / "in")], "bundle": "demo", "state_dir": str(tmp_path / "state"),
        "quiet_period_s": QUIET_S, "outputs.preview": False, "outputs.seg_type": "binary",
        "dicom_listener.enabled": True, "dicom_listener.port": free_port(),
        "dicom_listener.bind_address": LOOPBACK, "dicom_listener.allowed_ae_titles": [CONSOLE],
        "dicom_listener.completion_grace_s": 1.0, "dicom_listener.min_free_mb": 0.0,
        "destinations": destinations or [], "delivery.retry_initial_s": 0.5, "delivery.retry_max_s": 2.0,
    }
    overrides.update(more)
    (tmp_path / "in").mkdir(exist_ok=True)
    return load_config(None, overrides, env={})


def pacs_destination(pacs: OrthancPacs) -> dict[str, Any]:
    return {"name": "pacs", "ae_title": pacs.aet, "host": LOOPBACK, "port": pacs.dicom_port, "send": ["seg", "sr"],
            "timeout_s": 10}


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def send(port: int, files: list[Path]) -> None:
    proc = dcmtk_storescu(LOOPBACK, port, files, calling_aet=CONSOLE, called_aet=LISTENER_AE, timeout=120)
    assert proc.returncode == 0, describe(proc)


def test_console_to_pacs_seg_and_sr_arrive_referencing_the_source(tmp_path: Path) -> None:
    from pydicom import dcmread

    with OrthancPacs(tmp_path / "orthanc", modalities={"edgeseg": (LISTENER_AE, LOOPBACK, 104)}) as pacs:
        config = node_config(tmp_path, destinations=[pacs_destination(pacs)])
        files = write_dicom_series(edgeseg.demo.demo_mri_path(), tmp_path / "console", "t1 abdomen")
        source = dcmread(files[0], stop_before_pixels=True)
        watcher = Watcher(config, settle_s=0.2)
        watcher.start()
        try:
            send(config.node.listener.port, files)
            sent_at = time.monotonic()
            assert wait_for(lambda: pacs.count_instances() >= 2, timeout=120), pacs.log()[-3000:]
            latency = time.monotonic() - sent_at
        finally:
            watcher.stop()
        assert latency < QUIET_S / 2, "completed by the association's end, not by the quiet period"
        by_modality = {s["MainDicomTags"].get("Modality"): s for s in pacs.series()}
        assert set(by_modality) == {"SEG", "SR"}, by_modality
        seg_id = by_modality["SEG"]["Instances"][0]
        sr_id = by_modality["SR"]["Instances"][0]
        seg, sr = pacs.instance_tags(seg_id), pacs.instance_tags(sr_id)
        assert seg["StudyInstanceUID"] == sr["StudyInstanceUID"] == source.StudyInstanceUID
        assert seg["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == source.SeriesInstanceUID
        referenced = {i["ReferencedSOPInstanceUID"] for i in seg["ReferencedSeriesSequence"][0]
                      ["ReferencedInstanceSequence"]}
        assert referenced == {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        evidence = {s["SeriesInstanceUID"]: {i["ReferencedSOPInstanceUID"] for i in s["ReferencedSOPSequence"]}
                    for study in sr["CurrentRequestedProcedureEvidenceSequence"]
                    for s in study["ReferencedSeriesSequence"]}
        assert evidence[seg["SeriesInstanceUID"]] == {seg["SOPInstanceUID"]}
        assert evidence[source.SeriesInstanceUID] == referenced
        # the PACS has exactly what edgeseg wrote beside the series
        result = next((tmp_path / "in").rglob("*.edgeseg"))
        assert seg["SOPInstanceUID"] == str(dcmread(result / "seg.dcm", stop_before_pixels=True).SOPInstanceUID)
        assert sr["SOPInstanceUID"] == str(dcmread(result / "sr.dcm", stop_before_pixels=True).SOPInstanceUID)
        assert pacs.instance_metadata(seg_id, "RemoteAET") == LISTENER_AE
        from edgeseg.runtime.watch.store import JobStore

        with JobStore(config.store_path, readonly=True) as store:
            assert [d.state for d in store.deliveries()] == [SENT, SENT]


def test_a_pacs_that_is_down_gets_the_result_when_it_comes_up(tmp_path: Path) -> None:
    pacs = OrthancPacs(tmp_path / "orthanc", modalities={"edgeseg": (LISTENER_AE, LOOPBACK, 104)})
    config = node_config(tmp_path, destinations=[pacs_destination(pacs)])
    files = write_dicom_series(edgeseg.demo.demo_mri_path(), tmp_path / "console")
    watcher = Watcher(config, settle_s=0.2)
    watcher.start()
    try:
        send(config.node.listener.port, files)
        assert wait_for(lambda: watcher.delivery is not None and watcher.store is not None and any(
            d.attempts >= 1 and d.last_error for d in watcher.store.deliveries()), timeout=120)
        with pacs:
            assert wait_for(lambda: pacs.count_instances() == 2, timeout=60), pacs.log()[-3000:]
    finally:
        watcher.stop()


def test_a_label_map_result_reaches_orthanc_1_10_as_a_binary_seg_with_its_sr(tmp_path: Path) -> None:
    """Orthanc 1.10 does not know Label Map Segmentation Storage. Negotiated in the association, it gets a BINARY SEG
    rendered from the label-map result and the SR that references exactly that SEG; the outbox records the kind
    and the SOP Instance UID actually sent, and the series is done."""
    from pydicom import dcmread
    from pydicom.uid import SegmentationStorage

    from edgeseg.runtime.watch.store import DONE, JobStore

    with OrthancPacs(tmp_path / "orthanc", modalities={"edgeseg": (LISTENER_AE, LOOPBACK, 104)}) as pacs:
        config = node_config(tmp_path, destinations=[pacs_destination(pacs)], **{"outputs.seg_type": "labelmap"})
        watcher = Watcher(config, settle_s=0.2)
        watcher.start()
        try:
            send(config.node.listener.port, write_dicom_series(edgeseg.demo.demo_mri_path(), tmp_path / "c"))
            assert wait_for(lambda: watcher.store is not None and [d.state for d in watcher.store.deliveries()]
                            == [SENT, SENT], timeout=120), watcher.store.deliveries() if watcher.store else None
            assert wait_for(lambda: pacs.count_instances() == 2, timeout=10)
        finally:
            watcher.stop()
        by_modality = {s["MainDicomTags"].get("Modality"): s for s in pacs.series()}
        assert set(by_modality) == {"SEG", "SR"}, by_modality
        seg = pacs.instance_tags(by_modality["SEG"]["Instances"][0])
        sr = pacs.instance_tags(by_modality["SR"]["Instances"][0])
    result = next((tmp_path / "in").rglob("*.edgeseg"))
    written = dcmread(result / "seg.dcm", stop_before_pixels=True)
    binary = dcmread(result / "seg.binary.dcm", stop_before_pixels=True)
    assert written.SegmentationType == "LABELMAP" and binary.SegmentationType == "BINARY"
    assert seg["SOPClassUID"] == SegmentationStorage and seg["SOPInstanceUID"] == binary.SOPInstanceUID
    assert written.ReferencedSeriesSequence[0].SeriesInstanceUID == binary.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in written.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == \
        {i.ReferencedSOPInstanceUID for i in binary.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    evidence = {s["SeriesInstanceUID"]: {i["ReferencedSOPInstanceUID"] for i in s["ReferencedSOPSequence"]}
                for study in sr["CurrentRequestedProcedureEvidenceSequence"] for s in study["ReferencedSeriesSequence"]}
    assert evidence[binary.SeriesInstanceUID] == {binary.SOPInstanceUID}  # the SR of exactly the SEG it got
    assert sr["SOPInstanceUID"] == str(dcmread(result / "sr.binary.dcm", stop_before_pixels=True).SOPInstanceUID)
    with JobStore(config.store_path, readonly=True) as store:
        rows = {d.role: d for d in store.deliveries()}
        (job,) = store.rows()
    assert rows["seg"].sop_instance_uid == written.SOPInstanceUID  # the result's own object ...
    assert (rows["seg"].sent_kind, rows["seg"].sent_sop_instance_uid) == ("binary", binary.SOPInstanceUID)  # ... sent
    assert (rows["sr"].sent_kind, rows["sr"].sent_sop_instance_uid) == ("sr", sr["SOPInstanceUID"])
    assert job.state == DONE
    # rendered again (same input, same model): the same UIDs, so a re-send is one copy in the PACS
    from edgeseg.runtime.watch.seg_variant import binary_variant

    (result / "seg.binary.dcm").unlink()
    (result / "sr.binary.dcm").unlink()
    again = binary_variant(result)
    assert (again.seg_uid, again.sr_uid) == (binary.SOPInstanceUID, sr["SOPInstanceUID"])


@pytest.mark.parametrize("how", ["watcher restart", "deliver --now"])
def test_a_seg_type_change_sends_a_fresh_binary_seg_and_the_sr_of_exactly_it(
        tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A result made under ``seg_type: labelmap`` while the PACS is down waits in the outbox as a label map. The
    setting becomes ``binary``; the PACS (DCMTK storescp in promiscuous mode: it would take the label map too) comes
    up; after a watcher restart, or ``edgeseg deliver --now`` with no watcher, it receives a BINARY SEG with a new
    SOP Instance UID (not the stored label map) and the SR that references exactly that SEG; the outbox rows name
    the objects actually sent."""
    from pydicom import dcmread
    from pydicom.uid import SegmentationStorage

    from edgeseg.cli import main
    from edgeseg.runtime.watch.store import PENDING, JobStore

    require_peer("storescp")
    pacs_port = free_port()
    destination = {"name": "pacs", "ae_title": "LABELMAPS", "host": LOOPBACK, "port": pacs_port,
                   "send": ["seg", "sr"], "timeout_s": 5}
    slow = {"delivery.retry_initial_s": 600.0, "delivery.retry_max_s": 900.0}  # back-off: only C-ECHO or --now
    config = node_config(tmp_path, destinations=[destination], **{"outputs.seg_type": "labelmap"}, **slow)
    watcher = Watcher(config, settle_s=0.2)
    watcher.start()
    try:
        send(config.node.listener.port, write_dicom_series(edgeseg.demo.demo_mri_path(), tmp_path / "c"))
        assert wait_for(lambda: watcher.store is not None and any(
            d.role == "seg" and d.attempts >= 1 for d in watcher.store.deliveries()), timeout=180)
    finally:
        watcher.stop()
    result = next((tmp_path / "in").rglob("*.edgeseg"))
    labelmap = dcmread(result / "seg.dcm", stop_before_pixels=True)
    assert labelmap.SegmentationType == "LABELMAP"
    with JobStore(config.store_path, readonly=True) as store:
        before = {d.role: d for d in store.deliveries()}
    assert before["seg"].sop_instance_uid == labelmap.SOPInstanceUID and before["seg"].state == PENDING

    with DcmtkStorescp(tmp_path / "received", aet="LABELMAPS", port=pacs_port, extra=("-pm",)) as scp:
        if how == "watcher restart":
            config = node_config(tmp_path, destinations=[destination], **{"outputs.seg_type": "binary"}, **slow)
            watcher = Watcher(config, settle_s=0.2)
            watcher.start()
            try:
                received = scp.wait_for(2, timeout=60)  # C-ECHO during back-off: due as soon as it answers
            finally:
                watcher.stop()
        else:
            path = tmp_path / "watch_config.yaml"
            path.write_text(f"roots: [in]\nbundle: demo\nstate_dir: state\noutputs:\n  seg_type: binary\n"
                            f"destinations:\n  - {{name: pacs, ae_title: LABELMAPS, host: {LOOPBACK}, port: "
                            f"{pacs_port}, timeout_s: 5}}\n", encoding="utf-8")
            capsys.readouterr()
            assert main(["deliver", "--now", "--config", str(path)]) == 0
            out = capsys.readouterr().out
            assert "this command sends them now" in out and "sent 2, failed for good 0" in out, out
            received = scp.wait_for(2)
        time.sleep(0.5)
        assert len(scp.files()) == 2  # exactly the pair: no label map besides
    by_modality = {str(d.Modality): d for d in (dcmread(f) for f in received)}
    seg, sr = by_modality["SEG"], by_modality["SR"]
    binary = dcmread(result / "seg.binary.dcm", stop_before_pixels=True)
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.SOPInstanceUID == binary.SOPInstanceUID != labelmap.SOPInstanceUID
    evidence = {s.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in s.ReferencedSOPSequence}
                for study in sr.CurrentRequestedProcedureEvidenceSequence for s in study.ReferencedSeriesSequence}
    assert evidence[seg.SeriesInstanceUID] == {seg.SOPInstanceUID}  # the SR of exactly the SEG the PACS got
    with JobStore(config.store_path, readonly=True) as store:
        rows = {d.role: d for d in store.deliveries()}
    assert len(store_rows := list(rows.values())) == 2, store_rows
    assert (rows["seg"].state, rows["seg"].sop_instance_uid, rows["seg"].sent_sop_instance_uid, rows["seg"].sent_kind,
            rows["seg"].file.name) == ("sent", seg.SOPInstanceUID, seg.SOPInstanceUID, "binary", "seg.binary.dcm")
    assert (rows["sr"].state, rows["sr"].sop_instance_uid, rows["sr"].sent_sop_instance_uid, rows["sr"].file.name) == \
        ("sent", sr.SOPInstanceUID, sr.SOPInstanceUID, "sr.binary.dcm")


def test_a_series_over_several_associations_is_segmented_once_with_all_its_instances(tmp_path: Path) -> None:
    from helpers.fake_segmenter import FakeSegmenter

    config = node_config(tmp_path, **{"dicom_listener.completion_grace_s": 3.0})
    files = mr_series(tmp_path / "console", n=12)
    segmenter = FakeSegmenter()
    watcher = Watcher(config, segmenter, settle_s=0.2)
    watcher.start()
    try:
        port = config.node.listener.port
        send(port, files[:6])  # the console sends the series in two associations, the second at once
        send(port, files[6:])
        assert wait_for(lambda: watcher.history, timeout=30)
        time.sleep(1.0)
        assert len(watcher.history) == 1 and watcher.history[0].ok
        first = watcher.results[watcher.history[0].key]
        assert len(first.manifest["inputs"]) == 12
        # a late instance after the hand-out (another association) re-opens it: one more run, with all 13
        late = mr_series(tmp_path / "late", n=1, seed=5)
        from pydicom import dcmread

        ds = dcmread(late[0])
        ref = dcmread(files[0], stop_before_pixels=True)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
            ref.StudyInstanceUID, ref.SeriesInstanceUID, ref.FrameOfReferenceUID)
        ds.ImagePositionPatient = [float(v) for v in dcmread(files[-1], stop_before_pixels=True).ImagePositionPatient]
        ds.ImagePositionPatient[2] += 3.0
        ds.save_as(late[0])
        send(port, late)
        assert wait_for(lambda: len(watcher.history) == 2, timeout=30)
        assert len(watcher.results[watcher.history[1].key].manifest["inputs"]) == 13
    finally:
        watcher.stop()


def test_1000_images_over_one_association_while_three_consoles_send(tmp_path: Path) -> None:
    config = node_config(tmp_path, **{"dicom_listener.max_associations": 4,  # four consoles, all on 127.0.0.1
                                      "dicom_listener.max_associations_per_host": 4})
    big = mr_series(tmp_path / "big", n=1000, shape=(64, 64), description="t2 big")
    consoles = [mr_series(tmp_path / f"console{i}", n=60, shape=(48, 40), seed=i, description=f"console {i}")
                for i in range(3)]
    watcher = Watcher(config, settle_s=0.2)
    watcher.start()
    errors: list[str] = []

    def push(files: list[Path]) -> None:
        proc = dcmtk_storescu(LOOPBACK, config.node.listener.port, files, calling_aet=CONSOLE,
                              called_aet=LISTENER_AE, timeout=300)
        if proc.returncode != 0:
            errors.append(describe(proc))

    try:
        threads = [threading.Thread(target=push, args=(f,)) for f in [big, *consoles]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=320)
        assert not errors, errors[0]
        assert wait_for(lambda: len(watcher.history) >= 4, timeout=240), watcher.history
        time.sleep(1.0)
    finally:
        watcher.stop()
    assert watcher.receiver is None  # stopped with the watcher
    root = tmp_path / "in"
    stored = sorted(p for p in root.rglob("*.dcm") if ".edgeseg" not in str(p))
    assert len(stored) == 1000 + 3 * 60, "every acknowledged instance is on disk"
    assert not [p for p in root.rglob(".*") if ".edgeseg" not in p.name], "no temporaries left"
    keys = [r.key for r in watcher.history]
    assert len(keys) == len(set(keys)) == 4 and all(r.ok for r in watcher.history), "each series exactly once"
    sizes = sorted(watcher.results[k].manifest["series"]["n_dicom_files"] for k in keys)
    assert sizes == [60, 60, 60, 1000]
