"""kill -9 of the watcher process (the real command line, the demo bundle) at 20 random moments while a console
sends, while it segments and while it delivers to a PACS (Orthanc):

* every instance the console was told was stored is on disk, whole, under its final name;
* after the restart the console sends the series again (what a console does after a failed transfer) and every
  series ends with exactly one result beside it;
* the PACS holds exactly one SEG and one SR per series: a send cut short is repeated after the restart with the same
  SOP Instance UIDs (the outbox row stays pending), and a re-segmented series gets the same UIDs.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from node_helpers import CONSOLE, LISTENER_AE, same_instance, stored_path
from helpers.dicom_peers import LOOPBACK, OrthancPacs, free_port

import edgeseg.demo
from edgeseg.demo.dicom_series import write_dicom_series

MOMENTS = 20


def _write_config(path: Path, root: Path, state: Path, port: int, pacs_port: int) -> None:
    path.write_text(f"""
roots: ["{root}"]
bundle: demo
state_dir: "{state}"
quiet_period_s: 300
time_budget_s: null
stop_grace_s: 5
outputs: {{preview: false, seg_type: binary}}
dicom_listener:
  enabled: true
  ae_title: {LISTENER_AE}
  port: {port}
  bind_address: {LOOPBACK}
  allowed_ae_titles: [{CONSOLE}]
  completion_grace_s: 0.5
  min_free_mb: 0
destinations:
  - {{name: pacs, ae_title: PACS, host: {LOOPBACK}, port: {pacs_port}, send: [seg, sr], timeout_s: 10}}
delivery: {{retry_initial_s: 0.5, retry_max_s: 2}}
""", encoding="utf-8")


class WatcherProcess:
    """``python -m edgeseg watch --config FILE`` as a child process, its output in a log file."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log_path = config, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "watch", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        end = time.monotonic() + 120
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"watcher exited:\n{self.log()}"
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the listener did not open its port:\n{self.log()}")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def _send(port: int, files: list[Path], acked: list[str]) -> None:
    """One association, as a console: each instance acknowledged with 0x0000 is appended to ``acked``."""
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
    from pynetdicom import AE

    ae = AE(ae_title=CONSOLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    try:
        assoc = ae.associate(LOOPBACK, port, ae_title=LISTENER_AE)
    except OSError:
        return
    if not assoc.is_established:
        return
    try:
        for f in files:
            ds = dcmread(f)
            rsp = assoc.send_c_store(ds)
            if rsp is None or "Status" not in rsp or int(rsp.Status) != 0:
                return
            acked.append(str(ds.SOPInstanceUID))
            if not assoc.is_established:
                return
    finally:
        if assoc.is_established:
            assoc.release()


def _results_in_pacs(pacs: OrthancPacs, cache: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Source series UID -> the SEG and SR instances (Orthanc ids) in the PACS that reference it."""
    out: dict[str, list[str]] = {}
    for series in pacs.series():
        if series["MainDicomTags"].get("Modality") not in ("SEG", "SR"):
            continue
        for oid in series["Instances"]:
            if oid not in cache:
                cache[oid] = pacs.instance_tags(oid)
            tags = cache[oid]
            if tags.get("Modality") == "SEG":
                refs = [tags["ReferencedSeriesSequence"][0]["SeriesInstanceUID"]]
            else:
                refs = [s["SeriesInstanceUID"] for st in tags["CurrentRequestedProcedureEvidenceSequence"]
                        for s in st["ReferencedSeriesSequence"]]
            for ref in refs:
                out.setdefault(ref, []).append(f"{tags['Modality']}:{tags['SOPInstanceUID']}")
    return out


def _wait(predicate: Any, timeout: float, what: str, watcher: WatcherProcess) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout:g} s; watcher log:\n{watcher.log()}")


def test_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    from pydicom import dcmread

    rng = random.Random(20261130)
    root, state = tmp_path / "in", tmp_path / "state"
    root.mkdir()
    port = free_port()
    with OrthancPacs(tmp_path / "orthanc", modalities={"edgeseg": (LISTENER_AE, LOOPBACK, 104)}) as pacs:
        config = tmp_path / "watch_config.yaml"
        _write_config(config, root, state, port, pacs.dicom_port)
        watcher = WatcherProcess(config, port, tmp_path / "watch.log")
        cache: dict[str, dict[str, Any]] = {}
        sources: dict[str, list[Path]] = {}
        phases: list[str] = []
        watcher.start()
        try:
            for i in range(MOMENTS):
                files = write_dicom_series(edgeseg.demo.demo_mri_path(), tmp_path / f"console{i}", f"t1 {i}",
                                           patient_id=f"P{i:02d}")
                series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
                sources[series_uid] = files
                phase = ("receive", "segment", "deliver")[i % 3]
                phases.append(phase)
                acked: list[str] = []
                sender = threading.Thread(target=_send, args=(port, files, acked))
                sender.start()
                if phase == "receive":  # somewhere inside the transfer
                    time.sleep(rng.uniform(0.0, 0.4))
                else:
                    sender.join(timeout=60)
                    if phase == "segment":  # after the last instance: completion, reading, inference, writing
                        time.sleep(rng.uniform(0.3, 2.5))
                    else:  # once the result is published: recording, then sending to the PACS
                        _wait(lambda: len(list(root.rglob("*.edgeseg/seg.dcm"))) > i, 120, "the result", watcher)
                        time.sleep(rng.uniform(0.0, 0.15))
                watcher.kill()
                sender.join(timeout=60)
                for sop in acked:  # every acknowledged instance is on disk, whole
                    src = next(f for f in files if str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) == sop)
                    target = stored_path(root, src)
                    assert target.is_file() and same_instance(src, target), f"moment {i} ({phase}): {target}"
                watcher.start()
                resend: list[str] = []
                _send(port, files, resend)  # the console sends the series again
                assert len(resend) == len(files), f"moment {i}: the resend was not accepted:\n{watcher.log()}"
                _wait(lambda: len(_results_in_pacs(pacs, cache).get(series_uid, [])) >= 2, 120,
                      f"moment {i} ({phase}): SEG and SR in the PACS", watcher)
        finally:
            watcher.stop()
        in_pacs = _results_in_pacs(pacs, cache)
    assert set(phases) == {"receive", "segment", "deliver"}
    for series_uid, files in sources.items():
        kinds = sorted(x.split(":")[0] for x in in_pacs[series_uid])
        assert kinds == ["SEG", "SR"], f"{series_uid}: the PACS holds {in_pacs[series_uid]}"
        folder = stored_path(root, files[0]).parent
        results = [p for p in folder.iterdir() if p.name.endswith(".edgeseg")]
        assert len(results) == 1, f"{folder}: {sorted(p.name for p in folder.iterdir())}"
        hidden = [p.name for p in folder.iterdir() if p.name.startswith(".")]
        assert not hidden, f"{folder}: temporaries left: {hidden}"
        assert len([p for p in folder.glob("*.dcm")]) == len(files)
