"""``edgeseg watch | status | doctor | deliver | demo``: the watcher's sub-commands (registered by
:mod:`edgeseg.cli`).

``doctor`` is :mod:`edgeseg.runtime.watch.doctor`; what the commands share (heartbeat, liveness, tables, the job
store opened for a command) is :mod:`edgeseg.runtime.watch.state_view`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edgeseg.runtime.watch.doctor import cmd_doctor, sent_sop_classes
from edgeseg.runtime.watch.state_view import (DELIVERY_HEADERS, age, delivery_cells, liveness, read_beat, state_config,
                                              table, with_store)

log = logging.getLogger(__name__)

CONFIG_ENV = "EDGESEG_WATCH_CONFIG"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``watch``, ``status``, ``doctor``, ``deliver`` and ``demo``."""
    p = sub.add_parser(
        "watch", help="watch folders and segment every series that arrives (hands-free)",
        description="Watch the roots of watch_config.yaml and segment every series once it has completely "
                    "arrived. Command-line flags override the environment (EDGESEG_*), which overrides the file. "
                    "Stop with Ctrl+C or SIGTERM: a running series finishes first (stop_grace_s).")
    _config_arg(p)
    p.add_argument("--root", action="append", dest="roots", metavar="DIR", help="folder to watch (repeatable; "
                   "replaces roots: of the file)")
    p.add_argument("--bundle", help="model bundle folder, or 'demo'")
    p.add_argument("--device", help="OpenVINO device: CPU, GPU, AUTO ...")
    p.add_argument("--precision", help="auto, int8, fp16 or fp32")
    p.add_argument("--threads", type=int, help="inference threads")
    p.add_argument("--quiet-period", type=float, dest="quiet_period_s", metavar="S",
                   help="seconds without new files before a series counts as complete")
    p.add_argument("--time-budget", type=float, dest="time_budget_s", metavar="S", help="seconds per series")
    p.add_argument("--observer", choices=("native", "polling"), help="native events or polling (network shares)")
    p.add_argument("--polling-interval", type=float, dest="polling_interval_s", metavar="S")
    p.add_argument("--state-dir", help="job store and latency table folder")
    p.add_argument("--log-dir", help="log folder")
    p.add_argument("--max-concurrent", type=int, dest="max_concurrent_series", metavar="N")
    p.add_argument("--once", action="store_true", help="process what is there now, then exit (exit 1 if a "
                   "series failed)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", help="the watcher's queue and recent results",
                       description="Show whether the watcher runs, the series it is waiting for, and the most "
                                   "recent results from its job store.")
    _config_arg(p)
    p.add_argument("--state-dir", help="read this state folder instead of the configured one")
    p.add_argument("--limit", type=int, default=20, help="rows to show (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("doctor", help="check this PC for the watcher: devices, bundle, folders, time budget, "
                       "DICOM listener and destinations",
                       description="Run the checks and print one OK / FAIL / SKIP line each; exit 0 only if "
                                   "nothing failed. With a DICOM listener: its port, TLS files and root; for each "
                                   "destination: C-ECHO and whether it accepts the SEG (and SR) edgeseg sends.")
    _config_arg(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("deliver", help="results to DICOM destinations: send failed deliveries again",
                       description="Without options: the deliveries of the job store (pending, sent, failed). "
                                   "--retry: failed deliveries become pending again; a running watcher sends them "
                                   "within seconds, else the watcher sends them at its next start.")
    _config_arg(p)
    p.add_argument("--retry", action="store_true", help="make failed deliveries pending again")
    p.add_argument("--destination", metavar="NAME", help="only the deliveries to this destination")
    p.add_argument("--state-dir", help="use this state folder instead of the configured one")
    p.set_defaults(func=cmd_deliver)

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
    p.set_defaults(func=cmd_demo)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=os.environ.get(CONFIG_ENV),
                   help=f"watch_config.yaml (default: ${CONFIG_ENV}, else none)")


def _configure_file_logging(args: argparse.Namespace, log_file: Path) -> None:
    from edgeseg.cli import configure_logging

    configure_logging(-1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0), str(log_file))


# ------------------------------------------------------------------------------------------------------ watch


def cmd_watch(args: argparse.Namespace) -> int:
    from edgeseg.runtime.watch.config import load_config
    from edgeseg.runtime.watch.service import Watcher

    overrides = {k: getattr(args, k) for k in (
        "roots", "bundle", "device", "precision", "threads", "quiet_period_s", "time_budget_s", "observer",
        "polling_interval_s", "state_dir", "log_dir", "max_concurrent_series")}
    config = load_config(args.config, overrides)
    _configure_file_logging(args, config.log_file)
    return int(Watcher(config, once=args.once).run())


# ----------------------------------------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    from edgeseg.errors import EXIT_FAILED, EXIT_OK
    from edgeseg.runtime.watch.store import JobStore

    config = state_config(args)
    beat = read_beat(config.state_dir)
    if not config.store_path.is_file():
        print(f"No job store at {config.store_path}: the watcher has not run with this state folder yet (or the "
              "folder was deleted or moved).")
        return EXIT_FAILED
    def read(store: JobStore) -> tuple[Any, ...]:
        return (store.counts(), store.rows(limit=args.limit),
                store.delivery_counts(),  # none from a store before schema 3
                [*store.deliveries("failed", limit=args.limit), *store.deliveries("pending", limit=args.limit)])

    answer = with_store(config.store_path, read, readonly=True)
    if isinstance(answer, int):
        return answer
    counts, rows, delivery_counts, open_deliveries = answer
    now = time.time()
    state = liveness(config.state_dir, beat, now)
    if args.json:
        print(json.dumps({"watcher": beat, "state": state, "counts": counts, "recent": [r.__dict__ for r in rows],
                          "deliveries": {"counts": delivery_counts,
                                         "open": [dataclasses.asdict(d) for d in open_deliveries]}},
                         indent=2, default=str))
        return EXIT_OK
    print(f"watcher: {state}")
    print(f"store:   {config.store_path}")
    print("series:  " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if any(delivery_counts.values()) or config.node.destinations:
        print("deliveries: " + ", ".join(f"{n} {s}" for s, n in delivery_counts.items()))
    if beat and not beat.get("stopped") and state.startswith(("running", "NOT RESPONDING")):
        running = beat.get("running") or []
        print(f"running: {', '.join(running) if running else '-'}; queued: {beat.get('queued', 0)}")
        waiting = beat.get("open_series") or []
        if waiting:
            print("\nArriving (waiting for the quiet period):")
            print(table(["NAME", "FILES", "QUIET FOR", "KEY"],
                        [[w["name"], str(w["files"]), f"{w['quiet_for_s']:.0f} s", w["key"]] for w in waiting]))
    print(f"\nRecent ({len(rows)}):")
    table_rows = []
    for r in rows:
        seconds = "-" if r.actual_s is None else f"{r.actual_s:.1f}"
        if r.predicted_s is not None:
            seconds += f" (pred {r.predicted_s:.0f})"
        error = (r.last_error or "").replace("\n", " ")
        table_rows.append([age(now - r.updated_at) + " ago", r.state, str(r.attempts), seconds, r.name,
                           r.folder, error[:70] + ("..." if len(error) > 70 else "")])
    print(table(["UPDATED", "STATE", "TRIES", "SECONDS", "NAME", "FOLDER", "ERROR"], table_rows))
    if open_deliveries:
        print(f"\nDeliveries pending or failed ({len(open_deliveries)}; `edgeseg deliver --retry` sends the failed "
              "ones again):")
        print(table(DELIVERY_HEADERS, [delivery_cells(d, now) for d in open_deliveries]))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- deliver


def cmd_deliver(args: argparse.Namespace) -> int:
    """``edgeseg deliver [--retry] [--destination NAME]``: the outbox, and failed deliveries made pending again."""
    from edgeseg.errors import EXIT_FAILED, EXIT_OK
    from edgeseg.runtime.watch.store import JobStore

    config = state_config(args)
    if not config.store_path.is_file():
        print(f"No job store at {config.store_path}: the watcher has not run with this state folder yet, so there "
              "is nothing to deliver.")
        return EXIT_FAILED
    configured = {d.name for d in config.node.destinations}
    now = time.time()
    def work(store: JobStore) -> tuple[Any, ...]:
        retried = store.retry_failed_deliveries(args.destination) if args.retry else 0
        return retried, store.delivery_counts(), [d for d in store.deliveries("failed")
                                                  if args.destination is None or d.destination == args.destination]

    answer = with_store(config.store_path, work, readonly=not args.retry)
    if isinstance(answer, int):
        return answer
    n, counts, failed = answer
    which = f" to {args.destination}" if args.destination else ""
    if args.destination and args.destination not in configured:
        print(f"Note: {args.destination!r} is not among the configured destinations "
              f"({', '.join(sorted(configured)) or 'none'}); its deliveries fail again at once unless it is "
              "configured in watch_config.yaml.")
    print("deliveries: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if not args.retry:
        if failed:
            print(f"\nFailed{which} ({len(failed)}); fix the reason, then `edgeseg deliver --retry`:")
            print(table(DELIVERY_HEADERS, [delivery_cells(d, now) for d in failed]))
        return EXIT_OK
    if n == 0:
        print(f"No failed deliveries{which} to retry.")
        return EXIT_OK
    print(f"{n} failed deliver{'y is' if n == 1 else 'ies are'} pending again{which}.")
    state = liveness(config.state_dir, read_beat(config.state_dir), time.time())
    them = "it" if n == 1 else "them"
    if state.startswith("running"):
        print(f"The watcher is {state}: it sends {them} within seconds; `edgeseg status` shows the outcome.")
    elif state.startswith("NOT RESPONDING"):
        print(f"The watcher is {state}: it sends {them} once it responds again (or after a restart).")
    else:
        print(f"No watcher runs on this state folder ({state}): it sends {them} when it starts next (edgeseg "
              "watch, or the service).")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------------- demo


def _stage_demo_series(mri: Path, staging: Path) -> list[Path]:
    """The demo MRI written as a classic MR DICOM series (one file per slice) into ``staging``."""
    from edgeseg.demo.dicom_series import write_dicom_series

    return sorted(write_dicom_series(mri, staging, series_description="edgeseg demo abdomen"))


#: AE titles of the network demo (all on 127.0.0.1)
DEMO_CONSOLE_AE, DEMO_LISTENER_AE, DEMO_PACS_AE = "DEMO_CONSOLE", "EDGESEG", "DEMO_PACS"
LOOPBACK = "127.0.0.1"


class _DemoPacs:
    """The network demo's "PACS": a pynetdicom Storage SCP on a free loopback port that accepts every storage SOP
    class (Label Map Segmentation included) from anyone calling its AE title and writes each instance to
    ``<folder>/<SOPInstanceUID>.dcm`` (hidden temporary, then renamed). :attr:`received` lists (monotonic time, SOP
    class UID, path) in arrival order."""

    def __init__(self, folder: Path, ae_title: str = DEMO_PACS_AE) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.received: list[tuple[float, str, Path]] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self.port = 0

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        from edgeseg.runtime.node.probe import VERIFICATION

        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30
        ae.supported_contexts = AllStoragePresentationContexts
        if sent_sop_classes()["labelmap"] not in {str(cx.abstract_syntax) for cx in ae.supported_contexts}:
            ae.add_supported_context(sent_sop_classes()["labelmap"])  # an older pynetdicom's list lacks it
        ae.add_supported_context(VERIFICATION)
        self._server = ae.start_server((LOOPBACK, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self._server.server_address[1])

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()

    def _on_store(self, event: Any) -> int:
        from edgeseg.runtime.node.settings import is_valid_uid

        sop = str(event.request.AffectedSOPInstanceUID or "")
        sop_class = str(event.request.AffectedSOPClassUID or "")
        if not is_valid_uid(sop):
            return 0xC000
        from edgeseg.runtime.write.atomic import write_file_atomic

        final = self.folder / f"{sop}.dcm"
        try:
            try:
                path = Path(event.dataset_path)  # streamed to disk (the watcher's listener turns it on)
            except AttributeError:
                data = event.encoded_dataset(include_meta=True)
                write_file_atomic(final, lambda out: out.write(data))
            else:
                with open(path, "rb") as fin:
                    write_file_atomic(final, lambda out: shutil.copyfileobj(fin, out, 1 << 20))
        except OSError:
            log.exception("demo PACS: %s not written", final)
            return 0xA700
        with self._lock:
            self.received.append((time.monotonic(), sop_class, final))
        return 0x0000

    def first(self, sop_classes: set[str]) -> tuple[float, str, Path] | None:
        """The first received instance of one of ``sop_classes``, or None."""
        with self._lock:
            return next((r for r in self.received if r[1] in sop_classes), None)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _send_series_by_dicom(files: list[Path], port: int) -> float:
    """C-STORE ``files`` to the demo watcher's listener in one association, as a console does; returns the monotonic
    time the last instance was confirmed. Raises DicomNodeError when the association or a store fails."""
    from pydicom import dcmread
    from pynetdicom import AE

    from edgeseg.errors import DicomNodeError

    ae = AE(ae_title=DEMO_CONSOLE_AE)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = ae.connection_timeout = 30
    datasets = [dcmread(f) for f in files]
    for sop_class, syntax in dict.fromkeys((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                                           for ds in datasets):
        ae.add_requested_context(sop_class, list(dict.fromkeys([syntax, "1.2.840.10008.1.2.1",
                                                                "1.2.840.10008.1.2"])))
    assoc = ae.associate(LOOPBACK, port, ae_title=DEMO_LISTENER_AE)
    if not assoc.is_established:
        raise DicomNodeError(f"The demo watcher's DICOM listener {DEMO_LISTENER_AE}@{LOOPBACK}:{port} refused or did "
                             "not answer the association; see the demo's log.")
    last = time.monotonic()
    try:
        for path, ds in zip(files, datasets):
            rsp = assoc.send_c_store(ds)
            status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
            if status != 0x0000:
                raise DicomNodeError(f"The demo watcher's listener did not store {path.name} (status "
                                     f"{'none' if status is None else f'0x{status:04X}'}).")
            last = time.monotonic()
    finally:
        if assoc.is_established:
            assoc.release()
    return last


def _print_result(watcher: Any, record: Any) -> None:
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
    }
    pacs = _DemoPacs(tmp / "pacs") if dicom else None
    watcher: Any = None
    print(f"Demo folder: {tmp}")
    try:
        if pacs is not None:
            pacs.start()
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
        return EXIT_OK
    finally:
        if watcher is not None:
            watcher.stop()
        if pacs is not None:
            pacs.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"Kept: {tmp}")


def _await_demo_pacs(pacs: _DemoPacs, watcher: Any, config: Any, last_instance: float, deadline: float) -> int:
    """Wait until the SEG (and the SR, when written) reached the demo PACS; print when each arrived, counted from
    the last instance the console sent. EXIT_OK when all arrived, else DeliveryError's exit code with the reasons
    the outbox recorded."""
    from edgeseg.errors import EXIT_OK, DeliveryError

    expected: dict[str, set[str]] = {}
    if config.outputs.dicom_seg:
        expected["SEG"] = {sent_sop_classes()["binary"], sent_sop_classes()["labelmap"]}
    if config.outputs.dicom_sr:
        expected["SR"] = {sent_sop_classes()["sr"]}
    print(f"\nSending the result to {DEMO_PACS_AE} ...")
    arrived: dict[str, tuple[float, str, Path]] = {}
    while True:
        for what, classes in expected.items():
            if what not in arrived and (got := pacs.first(classes)) is not None:
                arrived[what] = got
                print(f"  {what} arrived at the local PACS {got[0] - last_instance:.1f} s after the last instance: "
                      f"{got[2]}")
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
