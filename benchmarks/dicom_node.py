"""DICOM node: instances per second received, and time from the last instance to the SEG at the destination.

Usage:

    python benchmarks/dicom_node.py                         # 1000 x 512^2 MR images, all rows
    python benchmarks/dicom_node.py --n 60 --skip-watcher   # a quick look at the receive rows only
    python benchmarks/dicom_node.py --work /data/bench --json /tmp/dicom_node.json

A synthetic MR series of ``--n`` 512x512 int16 images (MR Image Storage, explicit VR little endian, valid UIDs,
axial slices at 0.8 x 0.8 x 1 mm) is written once into ``--work`` and reused by later runs; three more series of
n/3 images each feed the concurrent rows. Every row sends with DCMTK's ``storescu`` (one association per sender,
all files of its series) over 127.0.0.1:

* A:  DCMTK ``storescp`` receiving into a folder, as it normally does (no fsync).
* A': the same storescp with 3 storescu at once (storescp serves one association at a time unless it forks).
* B:  edgeseg's :class:`~edgeseg.runtime.node.receive.StorageReceiver` alone, in a child process (its peak RSS is
  its own): chunked receive to a temporary file, hard link (copy where it cannot link) to
  ``<root>/<Study>/<Series>/<SOP>.dcm``, fsync, rename,
  fsync of the folder, then the success status. The child times ``store_file`` and ``os.fsync`` per instance.
* B0: the same with ``os.fsync`` replaced by a no-op in that child: what durability costs (not the product).
* B': the receiver with 3 storescu at once (3 series of n/3).
* C:  the whole watcher (real segmenter, the demo bundle, ``dicom_listener`` on, one destination: a DCMTK storescp
  with ``outputs.seg_type: binary``, as DCMTK 3.6.7 does not know the Label Map SEG SOP class) receiving the demo MRI
  as a DICOM series (117x91x20 @ 3 mm, ``write_dicom_series``): seconds from storescu's exit (the last instance
  acknowledged) to the SEG saved completely in storescp's folder. ``completion_grace_s`` (default 5 s) is part of
  that figure. Run twice: cold (the first series: bundle compile, tile latency measurement) and warm.
* C-big (``--big`` only): the same with the n x 512^2 series, given up after ``--big-timeout`` (180 s). Off by default
  for the reason in ``BIG_NOTE``.

Rates are instances (and MB of file data) per second of storescu's wall time: start, reading the files, association,
all C-STOREs, release. The source files have just been written, so they are read from the page cache. Peak RSS is
each receiver's ``VmHWM`` (/proc/<pid>/status) read just before it is stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402
from pydicom import uid  # noqa: E402

LOOPBACK = "127.0.0.1"
SCU_AET = "BENCHSCU"
MR_IMAGE_STORAGE = uid.MRImageStorage
SEGMENTATION_STORAGE = uid.SegmentationStorage
SR_CLASSES = (uid.BasicTextSRStorage, uid.EnhancedSRStorage, uid.ComprehensiveSRStorage, uid.Comprehensive3DSRStorage)
ROWS, COLS = 512, 512
BIG_NOTE = ("C-big (the 1000 x 512^2 series through the watcher) is not run by default: on the 2-core benchmark "
            "machine `edgeseg segment` of a 100 x 512^2 synthetic series (binary SEG) took 63 s and 1.4 GB "
            "(inference 5 s; the rest is resampling back to 512^2, statistics and a 20-segment x 100-frame binary "
            "SEG), so 1000 slices would take about 10 min, far over the 3 min this row may take. --big runs it anyway.")


# ------------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def proc_status_mb(pid: int, field: str = "VmHWM") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def dcmtk_version(exe: str) -> str:
    try:
        out = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    m = re.search(r"v(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else out.strip().splitlines()[0] if out.strip() else "?"


# ------------------------------------------------------------------------------------------ synthetic series


def write_synthetic_series(folder: Path, n: int, *, description: str, series_number: int, seed: int,
                           study_uid: str | None = None) -> list[Path]:
    """``n`` axial 512x512 int16 MR images (MR Image Storage, explicit VR LE), written once: a ``series.json``
    manifest beside the files marks a complete series, which later runs reuse. Returns the files in slice order."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

    manifest = folder / "series.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        files = [folder / name for name in info["files"]]
        if info.get("n") == n and all(f.is_file() for f in files):
            return files
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid, for_uid = generate_uid(), generate_uid()
    # a body-like phantom: an ellipse of "tissue" with two darker organs, scaled along z, plus Rician-ish noise
    yy, xx = np.mgrid[0:ROWS, 0:COLS].astype(np.float32)
    cy, cx = ROWS / 2, COLS / 2
    spacing, thickness = 0.8, 1.0
    now = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    files: list[Path] = []
    for k in range(n):
        t = k / max(1, n - 1)
        scale = 0.55 + 0.35 * np.sin(np.pi * t)
        body = ((xx - cx) / (COLS * 0.45 * scale)) ** 2 + ((yy - cy) / (ROWS * 0.32 * scale)) ** 2 <= 1.0
        organ = ((xx - cx * 0.7) / 60.0) ** 2 + ((yy - cy) / 45.0) ** 2 <= 1.0
        img = np.where(body, 600.0, 0.0) - np.where(organ & body, 250.0, 0.0)
        img = np.abs(img + rng.normal(0.0, 20.0, img.shape)).astype(np.int16)
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.PatientName = "EDGESEG^BENCH"
        ds.PatientID = "EDGESEG-BENCH"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.StudyDate, ds.StudyTime = now
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "edgeseg DICOM node benchmark"
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.SeriesDate, ds.SeriesTime = now
        ds.ContentDate, ds.ContentTime = now
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "edgeseg benchmark"
        ds.MagneticFieldStrength = 3.0
        ds.BodyPartExamined = "ABDOMEN"
        ds.PatientPosition = "HFS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = 5.0
        ds.EchoTime = 2.0
        ds.EchoTrainLength = 1
        ds.FlipAngle = 10
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        z = -n * thickness / 2 + k * thickness
        ds.ImagePositionPatient = [-(COLS - 1) * spacing / 2, -(ROWS - 1) * spacing / 2, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceLocation = z
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ROWS, COLS
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
        ds.PixelData = img.astype("<i2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(MR_IMAGE_STORAGE)
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        path = folder / f"IM{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    manifest.write_text(json.dumps({"n": n, "series_uid": series_uid, "files": [f.name for f in files]}))
    return files


# ------------------------------------------------------------------------------------------ DCMTK peers


def storescu_cmd(port: int, called: str, files: list[Path]) -> list[str]:
    return ["storescu", "-aet", SCU_AET, "-aec", called, "-to", "30", "-ta", "30", "-td", "120",
            LOOPBACK, str(port), *map(str, files)]


def send_parallel(port: int, called: str, groups: list[list[Path]], timeout: float = 1800.0) -> dict[str, Any]:
    """One storescu per group, all started together; wall from the first start to the last exit."""
    t0 = time.perf_counter()
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK: Nagle off (see Storescp)
    procs = [subprocess.Popen(storescu_cmd(port, called, g), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env) for g in groups]
    outs, walls = [], []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        walls.append(time.perf_counter() - t0)
        outs.append((p.returncode, out.decode(errors="replace")))
    wall = time.perf_counter() - t0
    failed = [f"storescu exit {rc}: {text[-1500:]}" for rc, text in outs if rc != 0]
    return {"wall_s": wall, "t_end": time.perf_counter(), "sender_walls_s": walls, "errors": failed}


class Storescp:
    """DCMTK storescp into ``out_dir`` (single process, its defaults: no fsync). ``marker_dir``: touch a marker per
    file once it is saved completely (``-xcr``, synchronous), used by the watcher rows to time arrivals.

    ``nodelay``: run it with ``TCP_NODELAY=1`` in its environment, which makes DCMTK disable Nagle's algorithm on its
    sockets. Debian's DCMTK 3.6.7 leaves Nagle on by default, and over loopback each C-STORE then waits ~40 ms for a
    delayed ACK (measured here: 30 instances in 1.4 s instead of 0.05 s): row A0 shows that default, the other
    rows use ``nodelay`` so that the comparison is about receiving, not about a socket option."""

    def __init__(self, out_dir: Path, aet: str = "STORESCP", marker_dir: Path | None = None,
                 nodelay: bool = True) -> None:
        self.out_dir, self.aet, self.marker_dir, self.nodelay = out_dir, aet, marker_dir, nodelay
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = out_dir.parent / f"storescp-{self.port}.log"

    def __enter__(self) -> Storescp:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cmd = ["storescp", "--aetitle", self.aet, "-od", str(self.out_dir)]
        if self.marker_dir is not None:
            self.marker_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["-xcr", f"touch '{self.marker_dir}/#f'", "-xs"]
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "TCP_NODELAY": "1" if self.nodelay else "0"}
        self.proc = subprocess.Popen([*cmd, str(self.port)], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"storescp did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def peak_rss_mb(self) -> float | None:
        return proc_status_mb(self.proc.pid) if self.proc else None

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self._log.close()


# ------------------------------------------------------------------------------------------ receiver child


def receiver_worker(root: Path, no_fsync: bool) -> int:
    """Child process: edgeseg's StorageReceiver alone on a free port. Prints {"port"} when listening, serves until
    stdin closes, then prints its counters, per-instance timings and peak RSS (VmHWM) as the last JSON line."""
    logging.basicConfig(level=logging.WARNING)
    from edgeseg.runtime.node import receive
    from edgeseg.runtime.node.settings import ListenerSettings

    timing = {"fsync_s": 0.0, "fsyncs": 0, "store_file_s": 0.0, "stores": 0, "first": None, "last": None}
    lock = threading.Lock()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        t = time.perf_counter()
        if not no_fsync:
            real_fsync(fd)
        with lock:
            timing["fsync_s"] += time.perf_counter() - t
            timing["fsyncs"] += 1

    os.fsync = fsync  # type: ignore[assignment]  # this child runs the receiver only
    real_store = receive.store_file

    def store_file(*a: Any, **kw: Any) -> Path:
        t = time.perf_counter()
        try:
            return real_store(*a, **kw)
        finally:
            now = time.perf_counter()
            with lock:
                timing["store_file_s"] += now - t
                timing["stores"] += 1
                timing["first"] = timing["first"] or t
                timing["last"] = now

    receive.store_file = store_file  # type: ignore[assignment]  # looked up by name in _on_store
    settings = ListenerSettings(enabled=True, ae_title="EDGESEG", port=0, bind_address=LOOPBACK,
                                allowed_ae_titles=(SCU_AET,), root=root, max_associations=4,
                                max_associations_per_host=4)  # row B's three consoles are one host here (loopback)
    receiver = receive.StorageReceiver(settings)
    receiver.start()
    print(json.dumps({"port": receiver.address[1], "rss_ready_mb": proc_status_mb(os.getpid(), "VmRSS")}),
          flush=True)
    sys.stdin.read()  # until the parent closes it
    rss_before_stop = proc_status_mb(os.getpid(), "VmHWM")
    receiver.stop()
    span = (timing["last"] - timing["first"]) if timing["first"] else None
    print(json.dumps({"stored": receiver.stats["stored"], "failed": receiver.stats["failed"],
                      "refused": receiver.stats["refused"], "peak_rss_mb": rss_before_stop,
                      "fsync_s": timing["fsync_s"], "fsyncs": timing["fsyncs"], "store_file_s": timing["store_file_s"],
                      "stores": timing["stores"], "store_span_s": span}), flush=True)
    return 0


# ------------------------------------------------------------------------------------------ rows


def _row(name: str, receiver: str, groups: list[list[Path]], sent: dict[str, Any], received: int,
         peak_rss: float | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    n = sum(len(g) for g in groups)
    mb = sum(f.stat().st_size for g in groups for f in g) / 1e6
    wall = sent["wall_s"]
    return {"row": name, "receiver": receiver, "senders": len(groups), "instances": n, "received": received,
            "mb": mb, "wall_s": wall, "inst_per_s": n / wall, "mb_per_s": mb / wall, "peak_rss_mb": peak_rss,
            "errors": sent["errors"], **(extra or {})}


def row_storescp(name: str, groups: list[list[Path]], work: Path, nodelay: bool = True) -> dict[str, Any]:
    out = work / "recv-storescp"
    shutil.rmtree(out, ignore_errors=True)
    with Storescp(out, nodelay=nodelay) as scp:
        sent = send_parallel(scp.port, scp.aet, groups)
        peak = scp.peak_rss_mb()
    received = sum(1 for _ in out.iterdir())
    shutil.rmtree(out, ignore_errors=True)
    label = "DCMTK storescp (no fsync)" + ("" if nodelay else ", DCMTK defaults (Nagle on)")
    return _row(name, label, groups, sent, received, peak)


def row_receiver(name: str, groups: list[list[Path]], work: Path, no_fsync: bool = False) -> dict[str, Any]:
    root = work / "recv-edgeseg"
    shutil.rmtree(root, ignore_errors=True)
    args = [sys.executable, str(Path(__file__).resolve()), "--_receiver", str(root)]
    if no_fsync:
        args.append("--_no-fsync")
    child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        ready = json.loads(child.stdout.readline() or "{}")
        if "port" not in ready:
            raise RuntimeError(f"receiver child did not start: {child.stderr.read() if child.stderr else ''}")
        sent = send_parallel(ready["port"], "EDGESEG", groups)
        peak_proc = proc_status_mb(child.pid)
        out, err = child.communicate(input="", timeout=60)  # closing stdin stops the receiver
    finally:
        if child.poll() is None:
            stop_process(child)
    result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    received = sum(1 for p in root.rglob("*.dcm") if not p.name.startswith("."))
    shutil.rmtree(root, ignore_errors=True)
    stores = max(1, result["stores"])
    label = "edgeseg StorageReceiver" + (" (fsync patched out: not the product)" if no_fsync else "")
    return _row(name, label, groups, sent, received, peak_proc or result["peak_rss_mb"], {
        "rss_ready_mb": ready.get("rss_ready_mb"), "stored": result["stored"], "failed": result["failed"],
        "store_ms_per_inst": 1000 * result["store_file_s"] / stores,
        "fsync_ms_per_inst": 1000 * result["fsync_s"] / stores, "fsyncs_per_inst": result["fsyncs"] / stores,
        "receiver_stderr_tail": err[-1500:] if result["failed"] or received != sum(map(len, groups)) else "",
    })


# ------------------------------------------------------------------------------------------ watcher rows


def _arrivals(dest: Path, markers: Path, seen: dict[str, tuple[str, float]]) -> None:
    """Record the arrival time of each file storescp has saved completely (its marker exists), by SOP class."""
    import pydicom

    for m in markers.iterdir():
        if m.name in seen:
            continue
        now = time.perf_counter()
        try:
            sop_class = str(pydicom.dcmread(dest / m.name, stop_before_pixels=True).SOPClassUID)
        except Exception:  # noqa: BLE001 - not readable yet: try again at the next poll
            continue
        seen[m.name] = (sop_class, now)


def watcher_rows(work: Path, big_files: list[Path] | None, big_timeout: float) -> tuple[list[dict[str, Any]],
                                                                                         dict[str, Any]]:
    from edgeseg.demo import BUNDLE_DIR, demo_mri_path
    from edgeseg.demo.dicom_series import write_dicom_series
    from edgeseg.runtime.watch.config import load_config
    from edgeseg.runtime.watch.service import Watcher

    base = work / "watcher"
    shutil.rmtree(base, ignore_errors=True)
    root, dest, markers = base / "incoming", base / "dest", base / "dest-saved"
    root.mkdir(parents=True)
    listen_port = free_port()
    rows: list[dict[str, Any]] = []
    with Storescp(dest, aet="DEST", marker_dir=markers) as scp:
        config = load_config(None, {
            "roots": [str(root)], "bundle": str(BUNDLE_DIR), "state_dir": str(base / "state"),
            "dicom_listener.enabled": True, "dicom_listener.port": listen_port,
            "dicom_listener.bind_address": LOOPBACK, "dicom_listener.allowed_ae_titles": [SCU_AET],
            "destinations": [{"name": "storescp", "ae_title": "DEST", "host": LOOPBACK, "port": scp.port,
                              "send": ["seg", "sr"]}],
            "outputs.seg_type": "binary",
        }, env={})
        settings = {"completion_grace_s": config.node.listener.completion_grace_s,
                    "quiet_period_s": config.quiet_period_s, "seg_type": config.outputs.seg_type,
                    "time_budget_s": config.time_budget_s, "bundle": str(BUNDLE_DIR), "device": config.device}
        watcher = Watcher(config)
        t_start = time.perf_counter()
        watcher.start()
        settings["watcher_start_s"] = time.perf_counter() - t_start
        seen: dict[str, tuple[str, float]] = {}
        try:
            cases: list[tuple[str, str, list[Path], float]] = []
            for i, label in enumerate(("C (cold)", "C (warm)")):
                files = write_dicom_series(demo_mri_path(), base / f"demo{i}", series_description=f"bench {label}")
                cases.append((label, "demo MRI 117x91x20 @ 3 mm", files, 600.0))
            if big_files:
                cases.append(("C-big", f"{len(big_files)} x 512x512 @ 0.8x0.8x1 mm", big_files, big_timeout))
            for label, what, files, timeout in cases:
                before = set(seen)
                n_hist = len(watcher.history)
                sent = send_parallel(listen_port, "EDGESEG", [files])
                t_last = sent["t_end"]
                seg_t = sr_t = None
                deadline = t_last + timeout
                while time.perf_counter() < deadline and watcher.alive():
                    _arrivals(dest, markers, seen)
                    new = [seen[k] for k in set(seen) - before]
                    seg_t = min((t for c, t in new if c == SEGMENTATION_STORAGE), default=None)
                    sr_t = min((t for c, t in new if c in SR_CLASSES), default=None)
                    if seg_t is not None and sr_t is not None:
                        break
                    if seg_t is not None and len(watcher.history) > n_hist and time.perf_counter() > seg_t + 10:
                        break  # the SR did not come (e.g. not written); the SEG is what is measured
                    time.sleep(0.02)
                rec = watcher.history[n_hist] if len(watcher.history) > n_hist else None
                rows.append({
                    "row": label, "series": what, "instances": len(files), "send_s": sent["wall_s"],
                    "last_to_seg_s": (seg_t - t_last) if seg_t is not None else None,
                    "last_to_sr_s": (sr_t - t_last) if sr_t is not None else None,
                    "grace_s": settings["completion_grace_s"],
                    "segment_s": rec.seconds if rec else None, "ok": rec.ok if rec else None,
                    "variant": rec.plan.variant if rec and rec.plan else None,
                    "error": (rec.error if rec else None) or ("; ".join(sent["errors"]) or None)
                    or (None if seg_t is not None else f"no SEG within {timeout:g} s"),
                })
                if seg_t is None:
                    break  # the watcher is still busy with it: a later case would measure the queue
        finally:
            watcher.stop(timeout=30)
    settings["watcher_peak_rss_mb_this_process"] = proc_status_mb(os.getpid())
    shutil.rmtree(base, ignore_errors=True)
    return rows, settings


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="images in the synthetic 512x512 series (default 1000)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeseg-dicom-node",
                    help="work folder; the synthetic series is written there once and reused (default "
                         "$TMPDIR/edgeseg-dicom-node)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--skip-watcher", action="store_true", help="only the receive rows (no model runs)")
    ap.add_argument("--big", action="store_true",
                    help="also the C-big row: the n x 512^2 series through the watcher (off by default: see BIG_NOTE)")
    ap.add_argument("--big-timeout", type=float, default=180.0,
                    help="seconds the C-big SEG may take after the last instance before the row is given up")
    ap.add_argument("--_receiver", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_no-fsync", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._receiver is not None:
        return receiver_worker(args._receiver, args._no_fsync)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for exe in ("storescu", "storescp"):
        if shutil.which(exe) is None:
            print(f"DCMTK's {exe} is missing (apt-get install dcmtk): this benchmark needs it.")
            write_json(args.json, {"available": False, "reason": f"{exe} missing", "machine": machine()})
            return 0

    import edgeseg  # noqa: F401 - before machine() imports openvino: edgeseg turns OpenVINO's telemetry off first
    import pynetdicom
    from pydicom.uid import generate_uid

    m = machine()
    m["versions"].update({"pynetdicom": pynetdicom.__version__, "pydicom": __import__("pydicom").__version__,
                          "dcmtk_storescp": dcmtk_version("storescp"), "dcmtk_storescu": dcmtk_version("storescu")})
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    series = write_synthetic_series(work / f"series-{args.n}", args.n, description="bench 512x512", series_number=1,
                                    seed=1)
    third = max(1, args.n // 3)
    study = generate_uid()
    thirds = [write_synthetic_series(work / f"series-{third}-{i}", third, description=f"bench third {i}",
                                     series_number=10 + i, seed=10 + i, study_uid=study) for i in range(3)]
    gen_s = time.perf_counter() - t0
    print(f"Series ready in {work} ({gen_s:.1f} s; reused when already there)", flush=True)

    rows = []
    for label, fn in (("A0", lambda: row_storescp("A0", [series], work, nodelay=False)),
                      ("A", lambda: row_storescp("A", [series], work)),
                      ("A'", lambda: row_storescp("A'", thirds, work)),
                      ("B", lambda: row_receiver("B", [series], work)),
                      ("B0", lambda: row_receiver("B0", [series], work, no_fsync=True)),
                      ("B'", lambda: row_receiver("B'", thirds, work))):
        print(f"row {label} ...", flush=True)
        rows.append(fn())

    watcher_table: list[dict[str, Any]] = []
    watcher_settings: dict[str, Any] = {}
    watcher_note = "skipped (--skip-watcher)"
    if not args.skip_watcher:
        from edgeseg.demo import BUNDLE_DIR

        if not (BUNDLE_DIR / "bundle.json").is_file():
            watcher_note = f"unavailable: no demo bundle at {BUNDLE_DIR}"
        else:
            print("rows C ...", flush=True)
            watcher_table, watcher_settings = watcher_rows(work, series if args.big else None, args.big_timeout)
            watcher_note = ""

    print(f"\nDICOM node: {args.n} x {ROWS}x{COLS} int16 MR images (explicit VR LE, "
          f"{rows[0]['mb'] / max(1, args.n) * 1000:.0f} KB each), DCMTK storescu over {LOOPBACK}")
    print(f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['platform']}; "
          + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    print()
    print_table(rows, [("row", "ROW"), ("receiver", "RECEIVER"), ("senders", "SCUs"), ("instances", "INSTANCES"),
                       ("wall_s", "WALL S"), ("inst_per_s", "INST/S"), ("mb_per_s", "MB/S"),
                       ("peak_rss_mb", "PEAK RSS MB"), ("store_ms_per_inst", "STORE MS/INST"),
                       ("fsync_ms_per_inst", "FSYNC MS/INST")])
    bad = [r for r in rows if r["received"] != r["instances"] or r["errors"]]
    for r in bad:
        print(f"  row {r['row']}: received {r['received']} of {r['instances']}; {r['errors'] or ''}"
              f"{r.get('receiver_stderr_tail') or ''}")
    print("\nWALL: storescu start to exit (slowest sender); PEAK RSS: the receiver's VmHWM. STORE MS: the receiver's "
          "store_file per instance (link of pynetdicom's temporary file, fsync, rename, folder fsync), FSYNC MS: "
          "the os.fsync calls in it.")
    if watcher_table:
        print()
        print_table(watcher_table, [("row", "ROW"), ("series", "SERIES"), ("instances", "INSTANCES"),
                                    ("send_s", "SEND S"), ("last_to_seg_s", "LAST->SEG S"),
                                    ("last_to_sr_s", "LAST->SR S"), ("grace_s", "OF WHICH GRACE S"),
                                    ("segment_s", "SEGMENT S"), ("variant", "VARIANT"), ("error", "ERROR")])
        print(f"\nLAST->SEG: storescu's exit (last instance acknowledged) to the SEG saved by the destination "
              f"storescp (seg_type binary); it includes completion_grace_s = "
              f"{watcher_settings.get('completion_grace_s'):g} s, segmenting (SEGMENT S) and the delivery. "
              f"Watcher.start() took {watcher_settings.get('watcher_start_s', 0):.1f} s, before the clock; the cold "
              "row's first series compiles the model and measures tile latency.")
        if not args.big:
            print(BIG_NOTE)
    else:
        print(f"\nWatcher rows: {watcher_note}")
    write_json(args.json, {"available": True, "machine": m, "n": args.n, "work": str(work),
                           "series_generation_s": gen_s, "receive": rows, "watcher": watcher_table,
                           "watcher_settings": watcher_settings, "watcher_note": watcher_note,
                           "big_note": None if args.big else BIG_NOTE})
    failed_watcher = [r for r in watcher_table if r["error"] and r["row"] != "C-big"]
    return 0 if not bad and not failed_watcher else 1


if __name__ == "__main__":
    sys.exit(main())
