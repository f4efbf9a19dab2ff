"""``edgeseg watch | status | doctor | demo``: the watcher's sub-commands (registered by :mod:`edgeseg.cli`)."""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import random
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

CONFIG_ENV = "EDGESEG_WATCH_CONFIG"
#: the "typical" volume doctor checks the budget with: 256 x 208 x 160 voxels at 1.5 mm
TYPICAL_SHAPE = (256, 208, 160)
TYPICAL_SPACING = (1.5, 1.5, 1.5)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``watch``, ``status``, ``doctor`` and ``demo``."""
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

    p = sub.add_parser("doctor", help="check this PC for the watcher: devices, bundle, folders, time budget",
                       description="Run the checks and print one OK / FAIL / SKIP line each; exit 0 only if "
                                   "nothing failed.")
    _config_arg(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("demo", help="see the watcher work: a real MRI arrives slice by slice and is segmented",
                       description="Start the watcher on a temporary folder with the packaged demo bundle, copy "
                                   "the packaged demo MRI into it as a DICOM series slice by slice like a scanner "
                                   "console would, wait for the result and show where it landed.")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and its results")
    p.add_argument("--timeout", type=float, default=900.0, metavar="S", help="give up after S seconds (900)")
    p.add_argument("--quiet-period", type=float, default=3.0, dest="quiet_period_s", metavar="S",
                   help="quiet period of the demo watcher (3 s)")
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


def cmd_status(args: argparse.Namespace) -> int:
    from edgeseg.errors import EXIT_FAILED, EXIT_OK, EdgesegError, StateStoreError, exit_code_of
    from edgeseg.runtime.watch.config import load_config
    from edgeseg.runtime.watch.store import JobStore, is_damage, store_damaged

    config = load_config(args.config, {"state_dir": args.state_dir}, check_paths=False)
    beat_path = config.state_dir / "watcher.json"
    beat: dict[str, Any] = {}
    if beat_path.is_file():
        try:
            beat = json.loads(beat_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            beat = {}
    if not config.store_path.is_file():
        print(f"No job store at {config.store_path}: the watcher has not run with this state folder yet (or the "
              "folder was deleted or moved).")
        return EXIT_FAILED
    try:
        with JobStore(config.store_path, readonly=True) as store:
            try:
                counts = store.counts()
                rows = store.rows(limit=args.limit)
            except sqlite3.DatabaseError as err:
                if not is_damage(err):
                    raise
                raise store_damaged(config.store_path, f"SQLite says: {err}") from err
    except StateStoreError as err:
        print(str(err))
        return err.exit_code
    except (EdgesegError, sqlite3.Error) as err:
        print(f"Job store {config.store_path} cannot be read: {err}")
        return exit_code_of(err)
    now = time.time()
    state = _liveness(config.state_dir, beat, now)
    if args.json:
        print(json.dumps({"watcher": beat, "state": state, "counts": counts, "recent": [r.__dict__ for r in rows]},
                         indent=2, default=str))
        return EXIT_OK
    print(f"watcher: {state}")
    print(f"store:   {config.store_path}")
    print("series:  " + ", ".join(f"{n} {s}" for s, n in counts.items()))
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
    return EXIT_OK


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

    failed = [r for r in results if r[0] == "FAIL"]
    print(f"\n{len(results) + 1 - len(failed)} OK/SKIP, {len(failed)} FAIL")
    return EXIT_FAILED if failed else EXIT_OK


# ------------------------------------------------------------------------------------------------------- demo


def _stage_demo_series(mri: Path, staging: Path) -> list[Path]:
    """The demo MRI written as a classic MR DICOM series (one file per slice) into ``staging``."""
    from edgeseg.demo.dicom_series import write_dicom_series

    return sorted(write_dicom_series(mri, staging, series_description="edgeseg demo abdomen"))


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
    tmp = Path(tempfile.mkdtemp(prefix="edgeseg-demo-"))
    incoming = tmp / "incoming"
    incoming.mkdir()
    overrides: dict[str, Any] = {
        "roots": [str(incoming)], "bundle": str(bundle),
        "quiet_period_s": args.quiet_period_s, "state_dir": str(tmp / "state"), "log_dir": str(tmp / "logs"),
        "stop_grace_s": 10.0,
    }
    config = load_config(None, overrides, env={})
    watcher = Watcher(config, settle_s=min(0.5, args.quiet_period_s / 2))
    print(f"Demo folder: {tmp}")
    watcher.start()
    try:
        files = _stage_demo_series(mri, tmp / "staging")
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
                  f"{target}, {config.log_file}")
            return EXIT_FAILED
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
        if not args.keep:
            print("(the demo folder is removed on exit; use --keep to keep it)")
        return EXIT_OK
    finally:
        watcher.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"Kept: {tmp}")
