"""``edgeseg demo``: see the watcher work. The packaged demo MRI arrives in a temporary folder as a DICOM series,
slice by slice as from a scanner console, and the packaged demo bundle segments it; with ``--dicom`` it arrives by
C-STORE at the watcher's DICOM listener and the SEG and SR go on to a local PACS.

The network demo uses the DICOM node's own pieces (:mod:`edgeseg.runtime.node`): the local PACS is a
:class:`~edgeseg.runtime.node.receive.StorageReceiver` on a loopback port that stores into ``<demo folder>/pacs``, and
the "console" sends the series with :func:`~edgeseg.runtime.node.send.send_files`. A command on top of the watcher
and the node: neither imports it.
"""
from __future__ import annotations

import argparse
import random
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeseg.runtime.node.receive import ReceiverEvent
    from edgeseg.runtime.watch.config import WatchConfig
    from edgeseg.runtime.watch.service import Watcher

#: AE titles of the network demo (all on 127.0.0.1)
DEMO_CONSOLE_AE, DEMO_LISTENER_AE, DEMO_PACS_AE = "DEMO_CONSOLE", "EDGESEG", "DEMO_PACS"
LOOPBACK = "127.0.0.1"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``demo``."""
    p = sub.add_parser("demo", help="see the watcher work: a real MRI arrives slice by slice and is segmented",
                       description="Start the watcher on a temporary folder with the packaged demo bundle, copy "
                                   "the packaged demo MRI into it as a DICOM series slice by slice like a scanner "
                                   "console would, wait for the result and show where it landed.")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and its results")
    p.add_argument("--timeout", type=float, default=900.0, metavar="S", help="give up after S seconds (900)")
    p.add_argument("--quiet-period", type=float, default=3.0, dest="quiet_period_s", metavar="S",
                   help="quiet period of the demo watcher (3 s)")
    p.add_argument("--dicom", action="store_true",
                   help="through the network: the watcher's DICOM listener receives the MRI by C-STORE (one "
                        "association, as a console sends) and the SEG and SR are sent to a local PACS started by "
                        "the demo (loopback ports only)")
    p.add_argument("--serve-for", type=float, default=0.0, dest="serve_for_s", metavar="S",
                   help="keep the watcher and its status page running S seconds after the result, to look at the "
                        "page (Ctrl+C stops sooner; default 0)")
    p.set_defaults(func=cmd_demo)


def _stage_demo_series(mri: Path, staging: Path) -> list[Path]:
    """The demo MRI written as a classic MR DICOM series (one file per slice) into ``staging``."""
    from edgeseg.demo.dicom_series import write_dicom_series

    return sorted(write_dicom_series(mri, staging, series_description="edgeseg demo abdomen"))


class _LocalPacs:
    """The network demo's "PACS": the node's :class:`~edgeseg.runtime.node.receive.StorageReceiver` as
    ``DEMO_PACS@127.0.0.1`` on a free port, accepting every storage SOP class from any peer that calls its AE title
    and storing into ``<folder>/<Study>/<Series>/<SOP>.dcm``. :meth:`first` finds what arrived, by Modality."""

    def __init__(self, folder: Path) -> None:
        from pynetdicom import AllStoragePresentationContexts

        from edgeseg.runtime.node.receive import StorageReceiver
        from edgeseg.runtime.node.settings import ListenerSettings
        from edgeseg.runtime.watch.doctor import sent_sop_classes

        storage = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
        storage += sent_sop_classes().values()  # what the demo watcher sends, whatever pynetdicom's list holds
        settings = ListenerSettings(enabled=True, ae_title=DEMO_PACS_AE, port=0, bind_address=LOOPBACK, root=folder,
                                    min_free_mb=0.0, sop_classes=tuple(dict.fromkeys(storage)))
        self.folder = folder
        self.receiver = StorageReceiver(settings, on_event=self._on_event)
        self._lock = threading.Lock()
        self._stored: list[tuple[float, Path]] = []  # (monotonic time, path) in arrival order
        self._modality: dict[Path, str] = {}

    @property
    def port(self) -> int:
        return self.receiver.address[1]

    def _on_event(self, event: ReceiverEvent) -> None:
        from edgeseg.runtime.node.receive import Stored

        if isinstance(event, Stored):
            with self._lock:
                self._stored.append((time.monotonic(), event.path))

    def first(self, modality: str) -> tuple[float, Path] | None:
        """(monotonic time, path) of the first stored instance whose Modality is ``modality``, or None."""
        from pydicom import dcmread

        with self._lock:
            stored = list(self._stored)
        for when, path in stored:
            if path not in self._modality:
                try:
                    self._modality[path] = str(dcmread(path, stop_before_pixels=True,
                                                       specific_tags=["Modality"]).get("Modality", ""))
                except (OSError, ValueError):
                    self._modality[path] = ""
            if self._modality[path] == modality:
                return when, path
        return None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _send_series_by_dicom(files: list[Path], port: int) -> float:
    """C-STORE ``files`` to the demo watcher's listener in one association, as a console does (the node's Storage
    SCU); returns the monotonic time all were confirmed. Raises DicomNodeError when one was not stored."""
    from edgeseg.errors import DicomNodeError
    from edgeseg.runtime.node.send import send_files
    from edgeseg.runtime.node.settings import Destination

    listener = Destination(name="demo_listener", ae_title=DEMO_LISTENER_AE, host=LOOPBACK, port=port, timeout_s=30.0)
    outcomes = send_files(listener, files, DEMO_CONSOLE_AE)
    done = time.monotonic()
    failed = next((o for o in outcomes if not o.ok), None)
    if failed is not None:
        raise DicomNodeError(f"The demo watcher's DICOM listener {listener.address} did not store {failed.path.name} "
                             f"({failed.message}); see the demo's log.")
    return done


def _print_result(watcher: Watcher, record: Any) -> None:
    result = watcher.results[record.key]
    print(f"\nSegmented in {record.seconds:.1f} s. Results in {result.output_dir}:")
    files_by_role = dict(getattr(result, "files", {}) or {})
    for role, label in (("labelmap", "masks (label map)"), ("per_structure", "masks per structure"),
                        ("preview", "preview"), ("statistics", "statistics"), ("dicom_seg", "DICOM-SEG"),
                        ("dicom_sr", "DICOM SR")):
        if role in files_by_role:
            print(f"  {label:<22} {files_by_role.pop(role)}")
    for role, path in sorted(files_by_role.items()):
        print(f"  {role:<22} {path}")


def cmd_demo(args: argparse.Namespace) -> int:
    import edgeseg.demo
    from edgeseg.errors import EXIT_FAILED, EXIT_OK, BundleError
    from edgeseg.runtime.watch.config import load_config
    from edgeseg.runtime.watch.service import Watcher

    bundle = edgeseg.demo.BUNDLE_DIR
    if not (bundle / "bundle.json").is_file():
        print(f"The packaged demo bundle is not in this build: {bundle} has no bundle.json.\n"
              "`edgeseg demo` needs it to segment. Build it (see the README: demo bundle), or try the watcher on "
              "your own bundle with `edgeseg watch --root DIR --bundle BUNDLE`.")
        return BundleError.exit_code
    mri = edgeseg.demo.demo_mri_path()  # a BundleError when this build lacks it
    dicom = bool(getattr(args, "dicom", False))
    tmp = Path(tempfile.mkdtemp(prefix="edgeseg-demo-"))
    incoming = tmp / "incoming"
    incoming.mkdir()
    overrides: dict[str, Any] = {
        "roots": [str(incoming)], "bundle": str(bundle),
        "quiet_period_s": args.quiet_period_s, "state_dir": str(tmp / "state"), "log_dir": str(tmp / "logs"),
        "stop_grace_s": 10.0,
        "warm_up": False,  # its state folder is temporary: measuring this PC for later series would be thrown away
        # the status page on a free loopback port, to look at while the demo runs
        "status_page.enabled": True, "status_page.bind_address": LOOPBACK, "status_page.port": 0,
    }
    pacs = _LocalPacs(tmp / "pacs") if dicom else None
    watcher: Any = None
    print(f"Demo folder: {tmp}")
    try:
        if pacs is not None:
            pacs.receiver.start()
            listen_port = _free_loopback_port()
            overrides.update({
                "dicom_listener.enabled": True, "dicom_listener.ae_title": DEMO_LISTENER_AE,
                "dicom_listener.bind_address": LOOPBACK, "dicom_listener.port": listen_port,
                "dicom_listener.allowed_ae_titles": [DEMO_CONSOLE_AE],
                "dicom_listener.completion_grace_s": min(1.0, args.quiet_period_s),
                "destinations": [{"name": "demo_pacs", "ae_title": DEMO_PACS_AE, "host": LOOPBACK,
                                  "port": pacs.port, "timeout_s": 30}],
                "delivery.retry_initial_s": 2.0, "delivery.retry_max_s": 10.0,
            })
            print(f"Local PACS: {DEMO_PACS_AE}@{LOOPBACK}:{pacs.port}, storing what it receives in {pacs.folder}")
        config = load_config(None, overrides, env={})
        watcher = Watcher(config, settle_s=min(0.5, args.quiet_period_s / 2))
        watcher.start()
        page_url = watcher.status_page.url if watcher.status_page is not None else None
        if page_url:
            print(f"Status page: {page_url} (while the demo runs)")
        files = _stage_demo_series(mri, tmp / "staging")
        if pacs is not None:
            print(f"Watcher: DICOM listener {DEMO_LISTENER_AE}@{LOOPBACK}:{listen_port} (accepts {DEMO_CONSOLE_AE}), "
                  f"writes into {incoming}; results go to {DEMO_PACS_AE}")
            print(f"Sending {mri.name} as a DICOM series of {len(files)} instances from {DEMO_CONSOLE_AE} to "
                  f"{DEMO_LISTENER_AE} in one association ...")
            started = time.monotonic()
            last_instance = _send_series_by_dicom(files, listen_port)
            print(f"Sent in {last_instance - started:.1f} s. The association ended: the watcher segments the "
                  f"series after {config.node.listener.completion_grace_s:g} s.")
        else:
            target = incoming / "demo_patient" / "mr_series"
            target.mkdir(parents=True)
            print(f"Sending {mri.name} as a DICOM series of {len(files)} slices into {target} ...")
            rng = random.Random(0)
            for src in files:
                shutil.copyfile(src, target / src.name)
                time.sleep(rng.uniform(0.02, 0.08))
            print(f"Sent. The watcher waits {args.quiet_period_s:g} s of quiet, then segments.")
        deadline = time.monotonic() + args.timeout
        while not watcher.history and time.monotonic() < deadline and watcher.alive():
            time.sleep(0.2)
        if not watcher.history:
            print(f"No result after {args.timeout:g} s; see the log {config.log_file}.")
            return EXIT_FAILED
        record = watcher.history[0]
        if not record.ok:
            print(f"Segmentation FAILED after {record.seconds:.1f} s: {record.error}\nError file and log: "
                  f"{incoming}, {config.log_file}")
            return EXIT_FAILED
        _print_result(watcher, record)
        if pacs is not None:
            code = _await_demo_pacs(pacs, watcher, config, last_instance, deadline)
            if code != EXIT_OK:
                return code
        if not args.keep:
            print("(the demo folder is removed on exit; use --keep to keep it)")
        serve_for = float(getattr(args, "serve_for_s", 0.0) or 0.0)
        if page_url:
            if serve_for > 0:
                print(f"\nStatus page: {page_url} — open it now; the demo stops in {serve_for:g} s (Ctrl+C: sooner).",
                      flush=True)
                end = time.monotonic() + serve_for
                while time.monotonic() < end and watcher.alive():
                    time.sleep(0.2)
            else:
                print(f"\nStatus page: {page_url} (served while the demo runs; --serve-for S keeps it up S seconds "
                      "after the result)", flush=True)
        return EXIT_OK
    finally:
        if watcher is not None:
            watcher.stop()
        if pacs is not None:
            pacs.receiver.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"Kept: {tmp}")


def _await_demo_pacs(pacs: _LocalPacs, watcher: Watcher, config: WatchConfig, last_instance: float,
                     deadline: float) -> int:
    """Wait until the SEG (and the SR, when written) reached the demo PACS; print when each arrived, counted from
    the last instance the console sent. EXIT_OK when all arrived, else DeliveryError's exit code with the reasons
    the outbox recorded."""
    from edgeseg.errors import EXIT_OK, DeliveryError

    expected = [what for what, on in (("SEG", config.outputs.dicom_seg), ("SR", config.outputs.dicom_sr)) if on]
    print(f"\nSending the result to {DEMO_PACS_AE} ...")
    arrived: dict[str, tuple[float, Path]] = {}
    while True:
        for what in expected:  # the Modality of a DICOM-SEG is SEG, of an SR document SR
            if what not in arrived and (got := pacs.first(what)) is not None:
                arrived[what] = got
                print(f"  {what} arrived at the local PACS {got[0] - last_instance:.1f} s after the last instance: "
                      f"{got[1]}")
        if len(arrived) == len(expected) or time.monotonic() >= deadline or not watcher.alive():
            break
        time.sleep(0.1)
    missing = [what for what in expected if what not in arrived]
    if not missing:
        return EXIT_OK
    reasons = []
    if watcher.store is not None:
        reasons = [f"{d.role}: {d.state}, {d.last_error or 'no error recorded'}" for d in watcher.store.deliveries()
                   if d.state != "sent"]
    print(f"{' and '.join(missing)} did not arrive at the local PACS in time" +
          (f" ({'; '.join(reasons)})" if reasons else "") + f"; see the log {config.log_file}.")
    return DeliveryError.exit_code
