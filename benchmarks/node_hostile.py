"""The DICOM listener against hosts that are not consoles (issue 18): memory, service and stop time, as figures.

Usage:

    python benchmarks/node_hostile.py                      # every row; a 1 GiB instance is written under --work
    python benchmarks/node_hostile.py --big-mb 256 --json /tmp/node_hostile.json

Each row runs edgeseg in a child process (its memory is its own) on 127.0.0.1; strangers connect from 127.0.0.2:

* flood: the listener alone (``StorageReceiver``, allowed AE title only, no host list) while 3 stranger connections
  each announce a 4 GiB A-ASSOCIATE-RQ and stream 64 MiB of junk: the child's RSS before and after (goal: +100 MB).
* big: one ``--big-mb`` (1024) MiB MR instance sent by DCMTK storescu to the listener: the child's peak RSS (VmHWM)
  over its RSS before (goal: <= 200 MB whatever the size).
* console: 8 idle stranger sockets open; seconds until the console's C-ECHO is answered (goal: <= 2 s).
* sigterm: the whole watcher (``edgeseg watch`` with the fake segmenter, tests/helpers/fake_watcher.py: the product's
  command line, signals and stop) with 8 idle strangers (127.0.0.2), one peer trickling a byte a second (127.0.0.3)
  and the big instance in flight from the console: seconds from SIGTERM to exit (goal: <= stop_grace_s + 2 s).
* kill -9: the same watcher, ``TMPDIR`` an empty folder, killed while the big instance is received: files left in
  that system temporary folder (goal: 0) and in ``<root>/.edgeseg-incoming`` (removed at the next start).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import machine, print_table, write_json  # noqa: E402

LOOPBACK, STRANGER = "127.0.0.1", "127.0.0.2"
CONSOLE, LISTENER_AE = "BENCHCONSOLE", "EDGESEG"
STOP_GRACE_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def strangers(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind((STRANGER, 0))
        s.settimeout(5)
        s.connect((LOOPBACK, port))
        out.append(s)
    return out


def console_echo(port: int) -> tuple[bool, float]:
    from edgeseg.runtime.node.send import echo
    from edgeseg.runtime.node.settings import Destination

    t0 = time.monotonic()
    ok, _ = echo(Destination("l", LISTENER_AE, LOOPBACK, port, timeout_s=10), CONSOLE)
    return ok, time.monotonic() - t0


def write_big_instance(path: Path, mib: int) -> Path:
    """An MR Image Storage instance of ``mib`` MiB of pixel data (rows x 32768 int16), written by streaming."""
    if path.is_file() and path.stat().st_size > mib << 20:
        return path
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    cols = 32768
    rows = max(1, (mib << 20) // (cols * 2))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BENCH", "Bench^Big", "MR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    ds.save_as(tmp, enforce_file_format=True)
    length = rows * cols * 2
    with open(tmp, "ab") as f:
        f.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, length))
        chunk = os.urandom(1 << 20)
        left = length
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
    tmp.replace(path)
    return path


def storescu(port: int, files: list[Path], timeout: float = 600) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.Popen(["storescu", "-aet", CONSOLE, "-aec", LISTENER_AE, "-to", "60", "-ta", "60", "-td", "600",
                             LOOPBACK, str(port), *map(str, files)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


# ------------------------------------------------------------------------------------------ listener child


def child_listener(root: Path) -> int:
    """Child: the StorageReceiver alone; prints {"port"}; stops at SIGTERM."""
    from edgeseg.runtime.node.receive import StorageReceiver
    from edgeseg.runtime.node.settings import ListenerSettings

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    receiver = StorageReceiver(ListenerSettings(enabled=True, ae_title=LISTENER_AE, port=0, bind_address=LOOPBACK,
                                                allowed_ae_titles=(CONSOLE,), root=root, min_free_mb=0.0))
    receiver.start()
    print(json.dumps({"port": receiver.address[1]}), flush=True)
    stop.wait()
    receiver.stop()
    return 0


def start_child(root: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(json.loads(proc.stdout.readline())["port"])
    time.sleep(0.5)
    return proc, port


def end_child(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------------------- rows


def row_flood(work: Path) -> dict[str, Any]:
    proc, port = start_child(work / "flood-root")
    try:
        before = status_mb(proc.pid, "VmRSS")
        socks = strangers(port, 3)
        junk = b"\0" * (1 << 20)
        for s in socks:
            s.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))
        sent = 0
        for _ in range(64):
            for s in socks:
                try:
                    s.sendall(junk)
                    sent += len(junk)
                except OSError:
                    pass
        time.sleep(1)
        after = status_mb(proc.pid, "VmRSS")
        for s in socks:
            s.close()
    finally:
        end_child(proc)
    return {"row": "flood", "what": "3 strangers announce 4 GiB PDUs", "value": round(after - before, 1),
            "unit": "MB RSS added", "goal": "<= 100", "note": f"{sent >> 20} MiB of junk accepted by the kernel"}


def row_big(work: Path, big: Path) -> dict[str, Any]:
    proc, port = start_child(work / "big-root")
    try:
        before = status_mb(proc.pid, "VmRSS")
        t0 = time.monotonic()
        rc = storescu(port, [big]).wait(900)
        took = time.monotonic() - t0
        peak = status_mb(proc.pid, "VmHWM")
    finally:
        end_child(proc)
    mib = big.stat().st_size >> 20
    return {"row": "big", "what": f"one {mib} MiB instance (storescu rc {rc}, {took:.0f} s)",
            "value": round(peak - before, 1), "unit": "MB peak RSS over idle", "goal": "<= 200",
            "note": f"idle RSS {before:.0f} MB, peak {peak:.0f} MB"}


def row_console(work: Path) -> dict[str, Any]:
    proc, port = start_child(work / "console-root")
    try:
        socks = strangers(port, 8)
        time.sleep(0.5)
        ok, took = console_echo(port)
        for s in socks:
            s.close()
    finally:
        end_child(proc)
    return {"row": "console", "what": "C-ECHO with 8 idle stranger sockets open", "value": round(took, 2),
            "unit": "s" + ("" if ok else " (NOT answered)"), "goal": "<= 2"}


def _watcher(work: Path, name: str, env_tmp: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    from helpers import fake_watcher

    base = work / name
    root = base / "in"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = base / "watch_config.yaml"
    config.write_text(f"roots: [in]\nstate_dir: state\nquiet_period_s: 300\nstop_grace_s: {STOP_GRACE_S:g}\n"
                      "dicom_listener:\n  enabled: true\n  bind_address: 127.0.0.1\n"
                      f"  port: {port}\n  allowed_ae_titles: [{CONSOLE}]\n  min_free_mb: 0\n", encoding="utf-8")
    env_tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TMPDIR=str(env_tmp))
    proc = subprocess.Popen(fake_watcher.command("-q", "watch", "--config", str(config)), env=env, cwd=base,
                            stdout=subprocess.DEVNULL, stderr=open(base / "watcher.log", "wb"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                break
        time.sleep(0.2)
    time.sleep(1.0)
    return proc, port, root


def _in_flight(root: Path, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    incoming = root / ".edgeseg-incoming"
    while time.monotonic() < deadline:
        if incoming.is_dir() and any(p.stat().st_size > 50 << 20 for p in incoming.iterdir()):
            return True
        time.sleep(0.1)
    return False


def row_sigterm(work: Path, big: Path) -> dict[str, Any]:
    proc, port, root = _watcher(work, "sigterm", work / "sigterm-tmp")
    socks = strangers(port, 8)
    trickler = socket.socket()
    trickler.bind(("127.0.0.3", 0))  # a second stranger host
    trickler.connect((LOOPBACK, port))
    trickler.sendall(struct.pack(">BBL", 0x01, 0, 200))
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            try:
                trickler.sendall(b"\0")
            except OSError:
                return
    threading.Thread(target=trickle, daemon=True).start()
    scu = storescu(port, [big])
    flying = _in_flight(root)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(STOP_GRACE_S + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    took = time.monotonic() - t0
    stop.set()
    scu.kill()
    scu.wait()
    for s in [*socks, trickler]:
        s.close()
    return {"row": "sigterm", "what": f"watcher exit (rc {rc}); 8 idle strangers, a trickler, "
            f"{'a big store in flight' if flying else 'the big store NOT yet in flight'}", "value": round(took, 2),
            "unit": "s", "goal": f"<= {STOP_GRACE_S + 2:g} (stop_grace_s {STOP_GRACE_S:g} + 2)"}


def row_kill9(work: Path, big: Path) -> dict[str, Any]:
    tmp = work / "kill9-tmp"
    proc, port, root = _watcher(work, "kill9", tmp)
    scu = storescu(port, [big])
    flying = _in_flight(root)
    proc.kill()
    proc.wait()
    scu.kill()
    scu.wait()
    left_tmp = sum(1 for p in tmp.rglob("*") if p.is_file())
    incoming = root / ".edgeseg-incoming"
    left_root = sum(1 for p in incoming.iterdir()) if incoming.is_dir() else 0
    proc2, _, _ = _watcher(work, "kill9", tmp)  # the next start removes what the kill left in the root
    time.sleep(1)
    after = sum(1 for p in incoming.iterdir()) if incoming.is_dir() else 0
    proc2.send_signal(signal.SIGTERM)
    proc2.wait(60)
    return {"row": "kill -9", "what": "files in TMPDIR after kill -9 mid-receive"
            + ("" if flying else " (big store NOT in flight)"), "value": left_tmp, "unit": "files",
            "goal": "0", "note": f"{left_root} in <root>/.edgeseg-incoming, {after} after the next start"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeseg-bench-node-hostile")
    ap.add_argument("--big-mb", type=int, default=1024)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.child:
        return child_listener(args.child)
    args.work.mkdir(parents=True, exist_ok=True)
    big = write_big_instance(args.work / f"big-{args.big_mb}.dcm", args.big_mb)
    rows = [row_flood(args.work), row_big(args.work, big), row_console(args.work), row_sigterm(args.work, big),
            row_kill9(args.work, big)]
    print_table(rows, [("row", "ROW"), ("what", "WHAT"), ("value", "VALUE"), ("unit", "UNIT"), ("goal", "GOAL"),
                       ("note", "NOTE")])
    write_json(args.json, {"machine": machine(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
