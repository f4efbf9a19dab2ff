"""``edgeseg watch | status | doctor | deliver | demo``: the watcher's sub-commands (registered by
:mod:`edgeseg.cli`)."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import json
import logging
import os
import random
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)

CONFIG_ENV = "EDGESEG_WATCH_CONFIG"
#: the "typical" volume doctor checks the budget with: 256 x 208 x 160 voxels at 1.5 mm
TYPICAL_SHAPE = (256, 208, 160)
TYPICAL_SPACING = (1.5, 1.5, 1.5)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``watch``, ``status``, ``doctor``, ``deliver`` and ``demo``."""
    from edgeseg.runtime.settings.flags import add_flags

    p = sub.add_parser(
        "watch", help="watch folders and segment every series that arrives (hands-free)",
        description="Watch the roots of watch_config.yaml and segment every series once it has completely "
                    "arrived. Command-line flags override the environment (EDGESEG_*), which overrides the file. "
                    "Stop with Ctrl+C or SIGTERM: a running series finishes first (stop_grace_s).")
    _config_arg(p)
    add_flags(p, "watch")  # the settings' flags, from the schema (runtime/settings)
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

    from edgeseg.runtime.settings.flags import flag_values

    config = load_config(args.config, flag_values(args, "watch"))
    _configure_file_logging(args, config.log_file)
    return int(Watcher(config, once=args.once).run())


# ----------------------------------------------------------------------------------------------------- status


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _liveness(state_dir: Path, beat: dict[str, Any], now: float) -> str:
    """The watcher's state from the state folder's lock (held only by a live process: a ``kill -9`` frees it at
    once), then the heartbeat file; the pid is checked when there is no lock file (a watcher before the lock)."""
    from edgeseg.runtime.watch.lock import lock_is_held, pid_alive, recorded_pid

    held = lock_is_held(state_dir)
    pid = recorded_pid(state_dir) if held else beat.get("pid")
    if held is None and beat and not beat.get("stopped") and isinstance(beat.get("pid"), int):
        held = pid_alive(int(beat["pid"]))
    last = f"last heartbeat {_age(now - beat['heartbeat_at'])} ago" if beat.get("heartbeat_at") else "no heartbeat"
    if held:
        if beat and now - beat.get("heartbeat_at", 0) <= 30 and not beat.get("stopped"):
            return f"running (pid {pid}, up {_age(now - beat.get('started_at', now))})"
        return f"NOT RESPONDING (pid {pid} holds the state folder, {last})"
    if not beat:
        return "not running (no heartbeat file)"
    if beat.get("stopped"):
        return f"stopped {_age(now - beat.get('heartbeat_at', now))} ago"
    return (f"NOT RUNNING: pid {beat.get('pid')} ended without stopping cleanly (killed or crashed; {last}); "
            "start it again, interrupted series then run again")


T = TypeVar("T")


def _with_store(path: Path, query: Callable[[Any], T], readonly: bool) -> T | int:
    """``query(store)`` on the job store at ``path``; on failure prints why (a damaged store: the command that moves
    it aside) and returns the exit code instead."""
    from edgeseg.errors import EdgesegError, StateStoreError, exit_code_of
    from edgeseg.runtime.watch.store import JobStore, is_damage, store_damaged

    try:
        with JobStore(path, readonly=readonly) as store:
            try:
                return query(store)
            except sqlite3.DatabaseError as err:
                if not is_damage(err):
                    raise
                raise store_damaged(path, f"SQLite says: {err}") from err
    except StateStoreError as err:
        print(str(err))
        return err.exit_code
    except (EdgesegError, sqlite3.Error) as err:
        print(f"Job store {path} cannot be read: {err}")
        return exit_code_of(err)


def cmd_status(args: argparse.Namespace) -> int:
    from edgeseg.errors import EXIT_FAILED, EXIT_OK
    from edgeseg.runtime.watch.config import load_config
    from edgeseg.runtime.watch.store import JobStore

    config = load_config(args.config, {"state_dir": args.state_dir}, check_paths=False)
    beat = _read_beat(config.state_dir)
    if not config.store_path.is_file():
        print(f"No job store at {config.store_path}: the watcher has not run with this state folder yet (or the "
              "folder was deleted or moved).")
        return EXIT_FAILED
    def read(store: JobStore) -> tuple[Any, ...]:
        return (store.counts(), store.rows(limit=args.limit),
                store.delivery_counts(),  # none from a store before schema 3
                [*store.deliveries("failed", limit=args.limit), *store.deliveries("pending", limit=args.limit)])

    answer = _with_store(config.store_path, read, readonly=True)
    if isinstance(answer, int):
        return answer
    counts, rows, delivery_counts, open_deliveries = answer
    now = time.time()
    state = _liveness(config.state_dir, beat, now)
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
            print(_table(["NAME", "FILES", "QUIET FOR", "KEY"],
                         [[w["name"], str(w["files"]), f"{w['quiet_for_s']:.0f} s", w["key"]] for w in waiting]))
    print(f"\nRecent ({len(rows)}):")
    table_rows = []
    for r in rows:
        seconds = "-" if r.actual_s is None else f"{r.actual_s:.1f}"
        if r.predicted_s is not None:
            seconds += f" (pred {r.predicted_s:.0f})"
        error = (r.last_error or "").replace("\n", " ")
        table_rows.append([_age(now - r.updated_at) + " ago", r.state, str(r.attempts), seconds, r.name,
                           r.folder, error[:70] + ("..." if len(error) > 70 else "")])
    print(_table(["UPDATED", "STATE", "TRIES", "SECONDS", "NAME", "FOLDER", "ERROR"], table_rows))
    if open_deliveries:
        print(f"\nDeliveries pending or failed ({len(open_deliveries)}; `edgeseg deliver --retry` sends the failed "
              "ones again):")
        print(_table(["DESTINATION", "ROLE", "STATE", "TRIES", "NEXT TRY / LAST ERROR", "SERIES KEY"],
                     [_delivery_cells(d, now) for d in open_deliveries]))
    return EXIT_OK


def _read_beat(state_dir: Path) -> dict[str, Any]:
    """The watcher's heartbeat file (``<state_dir>/watcher.json``), or {} when there is none or it is unreadable."""
    path = state_dir / "watcher.json"
    if not path.is_file():
        return {}
    try:
        beat = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return beat if isinstance(beat, dict) else {}


def _delivery_cells(d: Any, now: float) -> list[str]:
    """One row of the deliveries table: destination, role, state, tries, next try (pending) or last error, key."""
    error = (d.last_error or "").replace("\n", " ")
    if d.state == "pending":
        when = "due now" if d.next_at <= now else f"in {_age(d.next_at - now)}"
        detail = when + (f"; last: {error}" if error else "")
    else:
        detail = error or "-"
    detail = detail[:100] + ("..." if len(detail) > 100 else "")
    return [d.destination, d.role, d.state, str(d.attempts), detail, d.job_key]


# ---------------------------------------------------------------------------------------------------- deliver


def cmd_deliver(args: argparse.Namespace) -> int:
    """``edgeseg deliver [--retry] [--destination NAME]``: the outbox, and failed deliveries made pending again."""
    from edgeseg.errors import EXIT_FAILED, EXIT_OK
    from edgeseg.runtime.watch.store import JobStore

    config = _state_config(args)
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

    answer = _with_store(config.store_path, work, readonly=not args.retry)
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
            print(_table(["DESTINATION", "ROLE", "STATE", "TRIES", "NEXT TRY / LAST ERROR", "SERIES KEY"],
                         [_delivery_cells(d, now) for d in failed]))
        return EXIT_OK
    if n == 0:
        print(f"No failed deliveries{which} to retry.")
        return EXIT_OK
    print(f"{n} failed deliver{'y is' if n == 1 else 'ies are'} pending again{which}.")
    state = _liveness(config.state_dir, _read_beat(config.state_dir), time.time())
    them = "it" if n == 1 else "them"
    if state.startswith("running"):
        print(f"The watcher is {state}: it sends {them} within seconds; `edgeseg status` shows the outcome.")
    elif state.startswith("NOT RESPONDING"):
        print(f"The watcher is {state}: it sends {them} once it responds again (or after a restart).")
    else:
        print(f"No watcher runs on this state folder ({state}): it sends {them} when it starts next (edgeseg "
              "watch, or the service).")
    return EXIT_OK


def _state_config(args: argparse.Namespace) -> Any:
    """The configuration for commands that only read the state folder (paths are not checked)."""
    from edgeseg.runtime.watch.config import load_config

    return load_config(args.config, {"state_dir": getattr(args, "state_dir", None)}, check_paths=False)


# ----------------------------------------------------------------------------------------------------- doctor


def _writable(folder: Path) -> str | None:
    """None if a file can be created and removed in ``folder``, else the reason."""
    if not folder.is_dir():
        return "does not exist" if not folder.exists() else "is not a folder"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".edgeseg-doctor-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        return f"is not writable ({err.strerror or err})"
    return None


def cmd_doctor(args: argparse.Namespace) -> int:
    from edgeseg.errors import EXIT_FAILED, EXIT_OK, EdgesegError
    from edgeseg.runtime.watch.config import describe, load_config

    results: list[tuple[str, str, str]] = []

    def check(name: str, fn: Callable[[], tuple[str, str]]) -> None:
        try:
            status, detail = fn()
        except EdgesegError as err:
            status, detail = "FAIL", str(err)
        except Exception as err:  # noqa: BLE001 - doctor reports, it does not crash
            status, detail = "FAIL", f"{type(err).__name__}: {err}"
        results.append((status, name, detail))
        print(f"{status:<5} {name}: {detail}")

    try:
        config = load_config(args.config, check_paths=False)
    except EdgesegError as err:
        print(f"FAIL  config: {err}")
        return EXIT_FAILED
    print(f"OK    config: {config.source or '(no file: defaults and environment)'}")
    for key, value in describe(config):
        log.debug("config %s = %s", key, value)

    def root_check(root: Path) -> tuple[str, str]:
        problem = _writable(root)
        if problem:
            return "FAIL", f"{root} {problem}; results are written beside each series"
        return "OK", "exists and is writable"

    for i, root in enumerate(config.roots):
        check(f"roots[{i}] {root}", functools.partial(root_check, root))
    for key in ("state_dir", "log_dir"):
        folder = getattr(config, key)

        def state_check(folder: Path = folder) -> tuple[str, str]:
            folder.mkdir(parents=True, exist_ok=True)
            problem = _writable(folder)
            return ("FAIL", f"{folder} {problem}") if problem else ("OK", f"{folder} is writable")
        check(key, state_check)

    def store_check() -> tuple[str, str]:
        from edgeseg.runtime.watch.store import JobStore

        if not config.store_path.exists():
            return "OK", f"{config.store_path} will be created at the first start"
        with JobStore(config.store_path) as store:
            counts = store.counts()
        return "OK", f"{config.store_path}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    check("job store", store_check)

    def devices_check() -> tuple[str, str]:
        from edgeseg.runtime.infer.devices import device_present
        from edgeseg.runtime.infer.engine import available_devices

        devices = available_devices()
        if not devices:
            return "FAIL", "OpenVINO finds no device (its plugins are missing from this installation)"
        if not device_present(config.device, devices):  # the engine's rule (config checked that edgeseg runs on it)
            return "FAIL", (f"configured device {config.device} is not available (available: {', '.join(devices)}); "
                            "set device: in watch_config.yaml to one of them")
        return "OK", f"available: {', '.join(devices)}; configured {config.device}"
    check("openvino devices", devices_check)

    bundle_holder: list[Any] = []

    def bundle_check() -> tuple[str, str]:
        from edgeseg.bundle import load_bundle

        bundle = load_bundle(config.bundle, verify=True)
        bundle_holder.append(bundle)
        return "OK", (f"{config.bundle}: '{bundle.name}', {len(bundle.variants)} variant(s) "
                      f"({', '.join(v.name for v in sorted(bundle.variants, key=lambda v: v.rank))}), "
                      f"{len(bundle.files)} files verified")
    check("bundle", bundle_check)

    def budget_check() -> tuple[str, str]:
        from edgeseg.runtime.plan import LatencyTable, Planner
        from edgeseg.runtime.read import SeriesGeometry

        if not bundle_holder:
            return "SKIP", "no bundle to plan with"
        if not config.latency_path.is_file():
            return "SKIP", (f"no latency table yet ({config.latency_path}); it is measured at the first series the "
                            "watcher segments")
        planner = Planner(bundle_holder[0], LatencyTable(config.latency_path), config.device, config.precision,
                          config.threads, measure=None)
        plan = planner.plan(SeriesGeometry(TYPICAL_SHAPE, TYPICAL_SPACING), config.time_budget_s)
        what = f"typical {'x'.join(map(str, TYPICAL_SHAPE))} volume at {TYPICAL_SPACING[0]} mm"
        if plan.predicted_s is None:
            return "SKIP", f"{what}: {plan.reason}"
        return ("OK" if plan.fits else "FAIL"), f"{what}: {plan.reason}"
    check("time budget", budget_check)

    _doctor_listener(config, check)
    _doctor_destinations(config, check)

    failed = [r for r in results if r[0] == "FAIL"]
    print(f"\n{len(results) + 1 - len(failed)} OK/SKIP, {len(failed)} FAIL")
    return EXIT_FAILED if failed else EXIT_OK


#: storage SOP classes of what edgeseg sends (runtime/write: dicomseg.py by outputs.seg_type, sr.py)
SEG_SOP_CLASSES = {"binary": "1.2.840.10008.5.1.4.1.1.66.4", "labelmap": "1.2.840.10008.5.1.4.1.1.66.7"}
SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR (highdicom's Comprehensive3DSR)
_SOP_NAMES = {SEG_SOP_CLASSES["binary"]: "Segmentation Storage", SEG_SOP_CLASSES["labelmap"]:
              "Label Map Segmentation Storage", SR_SOP_CLASS: "Comprehensive 3D SR Storage"}
#: who usually listens on a port, for a port that is taken and whose owner cannot be read
_WELL_KNOWN_PORTS = {104: "a PACS or DCMTK storescp (104 is the standard DICOM port)",
                     11112: "another DICOM node: DCMTK storescp, dcm4che, a second watcher (11112 is the registered "
                            "DICOM port)",
                     4242: "Orthanc (its default DICOM port)"}

Check = Callable[[str, Callable[[], tuple[str, str]]], None]


def _port_holders(port: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes with a TCP socket listening on ``port`` (Linux: /proc; empty where it
    cannot be read, e.g. another user's process or another OS)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    holders: list[tuple[int, str]] = []
    if not inodes:
        return holders
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                continue
            raw = (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip()
            holders.append((int(proc.name), raw.decode(errors="replace")[:120] or proc.name))
        except OSError:
            continue
    return holders


def _listener_summary(listener: Any) -> str:
    peers = []
    if listener.allowed_ae_titles:
        peers.append("AE titles " + ", ".join(listener.allowed_ae_titles))
    if listener.allowed_hosts:
        peers.append("hosts " + ", ".join(listener.allowed_hosts))
    return (f"{listener.ae_title}@{listener.bind_address}:{listener.port}, TLS {'yes' if listener.tls else 'no'}, "
            f"allowed peers: {'; '.join(peers) or 'any'}")


def _doctor_listener(config: Any, check: Check) -> None:
    """The DICOM listener: its address, whether its port is free (or held by this state folder's running watcher),
    its TLS files, its root (writable, free space)."""
    listener = config.node.listener
    if not listener.enabled:
        check("DICOM listener", lambda: ("OK", "off (no port opened)"))
        return
    check("DICOM listener", lambda: ("OK", _listener_summary(listener)))

    def port_check() -> tuple[str, str]:
        host, port = listener.bind_address, listener.port
        where = f"{host}:{port}"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            if sys.platform != "win32":  # as the listener binds (SO_REUSEADDR: only a listening socket conflicts)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                sock.listen(1)
                return "OK", f"{where} is free"
            except OSError as err:
                problem = err
        if problem.errno == errno.EACCES:
            return "FAIL", (f"{where}: no permission to listen (ports below 1024 need administrator rights). Fix: "
                            "choose dicom_listener.port >= 1024 (and the same port on the console), or grant the "
                            "right (Linux: setcap cap_net_bind_service)")
        if problem.errno == errno.EADDRNOTAVAIL:
            return "FAIL", (f"{host} is not an address of this PC. Fix: set dicom_listener.bind_address to one of "
                            "its addresses, or 0.0.0.0 for all")
        if problem.errno not in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
            return "FAIL", f"cannot listen on {where}: {problem.strerror or problem}"
        beat = _read_beat(config.state_dir)
        state = _liveness(config.state_dir, beat, time.time())
        holders = _port_holders(port)
        watcher_pid = beat.get("pid") if state.startswith(("running", "NOT RESPONDING")) else None
        if watcher_pid is not None and (not holders or any(pid == watcher_pid for pid, _ in holders)):
            return "OK", f"{where} is in use by this state folder's watcher ({state}): its listener"
        if holders:
            who = "; ".join(f"pid {pid}: {cmd}" for pid, cmd in holders)
        else:
            who = _WELL_KNOWN_PORTS.get(port, "another program (its owner cannot be read here)")
        if watcher_pid is not None:
            who += f" (not this state folder's watcher, pid {watcher_pid})"
        elif state.startswith(("stopped", "not running", "NOT RUNNING")):
            who += f"; this state folder's watcher is not running ({state.split(':')[0]})"
        return "FAIL", (f"{where} is taken by {who}. Fix: stop that program, or choose another dicom_listener.port "
                        "(and the same port on the console)")
    check("DICOM listener port", port_check)

    if listener.tls is not None:
        def tls_check() -> tuple[str, str]:
            try:
                listener.tls.server_context()
            except (OSError, ValueError) as err:
                return "FAIL", (f"the certificate or key does not load ({err}). Fix: dicom_listener.tls_certificate "
                                "and tls_key must be PEM files that match (tls_ca: PEM CA certificates)")
            files = [str(f) for f in (listener.tls.certificate, listener.tls.key, listener.tls.ca) if f is not None]
            return "OK", f"loaded {', '.join(files)}" + (
                "; peers must present a certificate" if listener.tls.require_peer_certificate else "")
        check("DICOM listener TLS", tls_check)

    def root_check() -> tuple[str, str]:
        root = Path(listener.root) if listener.root is not None else None
        if root is None:
            return "FAIL", "no root to write received images into. Fix: set dicom_listener.root or roots"
        problem = _writable(root)
        if problem:
            return "FAIL", f"{root} {problem}; received images are written there"
        free_mb = shutil.disk_usage(root).free / 1e6
        text = f"{root} is writable; {free_mb:,.0f} MB free (min_free_mb {listener.min_free_mb:g})"
        if free_mb < listener.min_free_mb:
            return "FAIL", (text + ": the listener answers every image 'out of resources' (0xA700). Fix: free "
                            "space on that disk or lower dicom_listener.min_free_mb")
        return "OK", text
    check("DICOM listener root", root_check)


def _doctor_destinations(config: Any, check: Check) -> None:
    """Each destination: C-ECHO, then whether it accepts the SOP classes of what it is sent (SEG by
    ``outputs.seg_type``, and the Comprehensive 3D SR when ``send`` includes sr)."""
    from edgeseg.runtime.node.send import default_calling_ae, echo

    listener = config.node.listener
    seg_type = str(config.outputs.seg_type)
    for destination in config.node.destinations:
        calling = default_calling_ae(destination, listener.ae_title if listener.enabled else None)
        reached: list[bool] = []

        def echo_check(destination: Any = destination, calling: str = calling,
                       reached: list[bool] = reached) -> tuple[str, str]:
            ok, why = echo(destination, calling)
            reached.append(ok)
            if ok:
                return "OK", why
            return "FAIL", (f"{why}. Fix: check host, port and AE title in destinations, that {destination.address} "
                            f"runs, and that it knows our AE title {calling!r} and this PC's address")
        check(f"destination {destination.name}", echo_check)

        wanted: list[tuple[str, str, str | None]] = []  # (what, SOP class, why not sent)
        if "seg" in destination.send:
            wanted.append(("SEG", SEG_SOP_CLASSES.get(seg_type, SEG_SOP_CLASSES["labelmap"]),
                           None if config.outputs.dicom_seg else "outputs.dicom_seg is off"))
        if "sr" in destination.send:
            wanted.append(("SR", SR_SOP_CLASS, None if config.outputs.dicom_sr else "outputs.dicom_sr is off"))
        to_probe = [sop for _, sop, off in wanted if off is None]
        answer: dict[str, bool] = {}
        failure: list[str] = []
        if to_probe and reached and reached[0]:
            from edgeseg.runtime.node.probe import accepted_sop_classes

            try:
                answer = accepted_sop_classes(destination, calling, to_probe)
            except Exception as err:  # noqa: BLE001 - reported on each line below
                failure.append(str(err))
        for what, sop, off in wanted:
            def sop_check(what: str = what, sop: str = sop, off: str | None = off,
                          destination: Any = destination) -> tuple[str, str]:
                name = f"{_SOP_NAMES[sop]} ({sop})"
                if off is not None:
                    return "SKIP", f"{off}: no {what} is sent"
                if failure:
                    return "FAIL", failure[0]
                if sop not in answer:
                    return "SKIP", "not checked: no association (see the C-ECHO line)"
                if answer[sop]:
                    return "OK", f"{destination.address} accepts {name}"
                if sop == SEG_SOP_CLASSES["labelmap"]:
                    return "FAIL", (f"{destination.address} does not accept {name}, which outputs.seg_type: labelmap "
                                    "writes (many PACS, e.g. Orthanc 1.10 and DCMTK 3.6, do not know it yet). Fix: set "
                                    "outputs.seg_type: binary in watch_config.yaml (a BINARY SEG, which every "
                                    "SEG-capable PACS stores), or enable the SOP class on the PACS")
                if what == "SEG":
                    return "FAIL", (f"{destination.address} does not accept {name}. Fix: allow DICOM-SEG on it, or "
                                    f"remove seg from send of destination {destination.name}")
                return "FAIL", (f"{destination.address} does not accept {name}. Fix: allow it on the PACS, or set "
                                f"send: [seg] for destination {destination.name}")
            check(f"destination {destination.name} {what}", sop_check)


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
        if SEG_SOP_CLASSES["labelmap"] not in {str(cx.abstract_syntax) for cx in ae.supported_contexts}:
            ae.add_supported_context(SEG_SOP_CLASSES["labelmap"])  # an older pynetdicom's list lacks it
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
        expected["SEG"] = set(SEG_SOP_CLASSES.values())
    if config.outputs.dicom_sr:
        expected["SR"] = {SR_SOP_CLASS}
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
