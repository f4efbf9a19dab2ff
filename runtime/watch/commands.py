"""``edgeseg watch | status | doctor | deliver``: the watcher's sub-commands (registered by :mod:`edgeseg.cli`).

``doctor`` is :mod:`edgeseg.runtime.watch.doctor`; what the commands share (heartbeat, liveness, tables, the job
store opened for a command) is :mod:`edgeseg.runtime.watch.state_view`. ``edgeseg demo`` is
:mod:`edgeseg.runtime.demo`, on top of the watcher and the DICOM node."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from edgeseg.runtime.watch.doctor import cmd_doctor
from edgeseg.runtime.watch.state_view import (DELIVERY_HEADERS, age, delivery_cells, liveness, read_beat, state_config,
                                              table, with_store)

log = logging.getLogger(__name__)

CONFIG_ENV = "EDGESEG_WATCH_CONFIG"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``watch``, ``status``, ``doctor`` and ``deliver`` (``demo``: :mod:`edgeseg.runtime.demo`)."""
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
                                   "destination: C-ECHO, whether it accepts the SEG (and SR) edgeseg sends, and "
                                   "whether it took our C-STOREs as far as the job store's deliveries show.")
    _config_arg(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("deliver", help="results to DICOM destinations: send failed deliveries again",
                       description="Without options: the deliveries of the job store (pending, sent, failed). "
                                   "--retry: failed deliveries become pending again; --now: pending ones are due at "
                                   "once (also those waiting in back-off): a running watcher sends them within "
                                   "seconds; with no watcher running this command sends them itself and prints "
                                   "the outcome (exit 19 when some were not delivered).")
    _config_arg(p)
    p.add_argument("--retry", action="store_true", help="make failed deliveries pending again")
    p.add_argument("--now", action="store_true", help="send pending deliveries now (also those waiting in back-off); "
                   "with --retry the failed ones too")
    p.add_argument("--destination", metavar="NAME", help="only the deliveries to this destination")
    p.add_argument("--state-dir", help="use this state folder instead of the configured one")
    p.set_defaults(func=cmd_deliver)


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


def _bundle_line(path: Any) -> str:
    """The configured bundle's name, version and each precision's fidelity verdict (files not verified here:
    ``doctor`` does that)."""
    from edgeseg.bundle.schema import load_bundle
    from edgeseg.errors import BundleError

    try:
        bundle = load_bundle(path, verify=False)
    except BundleError as err:
        return f"{path}: {err}"
    version = f" v{bundle.version}" if bundle.version else ""
    marker = " (NOT FOR CLINICAL USE)" if bundle.not_for_clinical_use else ""
    return f"{bundle.name}{version}{marker}; precisions: {bundle.describe_precisions()}"


def cmd_status(args: argparse.Namespace) -> int:
    from edgeseg.errors import EXIT_FAILED, EXIT_OK
    from edgeseg.runtime.watch.status_report import RESULT_COLUMNS, remedy_of, result_cells, result_entry

    RESULT_STATE = [field for _, field in RESULT_COLUMNS].index("state")
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
                [*store.deliveries("failed", limit=args.limit), *store.deliveries("pending", limit=args.limit)],
                store.open_delivery_keys())

    answer = with_store(config.store_path, read, readonly=True)
    if isinstance(answer, int):
        return answer
    counts, rows, delivery_counts, open_deliveries, undelivered = answer
    now = time.time()
    state = liveness(config.state_dir, beat, now)
    if args.json:
        recent = [dict(r.__dict__, delivery=undelivered.get(r.key))  # "pending"/"failed": not delivered yet
                  for r in rows]
        print(json.dumps({"watcher": beat, "state": state, "bundle": _bundle_line(config.bundle), "counts": counts,
                          "recent": recent,
                          "results": [result_entry(r, now, config) for r in rows],
                          "deliveries": {"counts": delivery_counts,
                                         "open": [dataclasses.asdict(d) for d in open_deliveries]}},
                         indent=2, default=str))
        return EXIT_OK
    print(f"watcher: {state}")
    print(f"store:   {config.store_path}")
    print(f"bundle:  {_bundle_line(config.bundle)}")
    delivering = sum(1 for r in rows if r.state == "done" and r.key in undelivered)
    print("series:  " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + (f" ({delivering} of the recent done ones not delivered yet)" if delivering else ""))
    if any(delivery_counts.values()) or config.node.destinations:
        print("deliveries: " + ", ".join(f"{n} {s}" for s, n in delivery_counts.items()))
    if beat and not beat.get("stopped") and state.startswith(("running", "NOT RESPONDING")):
        running = beat.get("running") or []
        print(f"running: {len(running) or '-'}; queued: {beat.get('queued', 0)}")
        by_key = {r.key: r for r in rows}
        for item in beat.get("progress") or [{"key": k} for k in running]:
            row = by_key.get(item["key"])
            what = (row.description or row.name) if row is not None else item["key"]
            stage = f"{item.get('stage') or ''} {100 * float(item.get('fraction') or 0):.0f} %".strip()
            print(f"  {what}: {stage}, for {age(now - float(item.get('since') or now))}")
        waiting = beat.get("open_series") or []
        if waiting:
            print("\nArriving (waiting for the quiet period):")
            print(table(["NAME", "FILES", "QUIET FOR", "KEY"],
                        [[w["name"], str(w["files"]), f"{w['quiet_for_s']:.0f} s", w["key"]] for w in waiting]))
    print(f"\nRecent ({len(rows)}):")
    table_rows = []
    for r in rows:
        entry = result_entry(r, now)
        cells = result_cells(entry)
        if r.predicted_s is not None:
            cells[-1] += f" (pred {r.predicted_s:.0f})"
        if r.actual_s is not None and r.budget_s is not None and r.actual_s > r.budget_s:
            cells[-1] += f" OVER BUDGET {r.budget_s:g}"
        error = (r.last_error or "").replace("\n", " ")
        if r.state in ("done", "partial") and r.key in undelivered:  # never a plain "done" before PACS has it
            cells[RESULT_STATE] += ", delivery " + ("failed" if undelivered[r.key] == "failed" else "pending")
        table_rows.append([*cells, str(r.attempts), r.name, error[:70] + ("..." if len(error) > 70 else "")])
    print(table([h for h, _ in RESULT_COLUMNS] + ["TRIES", "NAME", "ERROR"], table_rows))
    failures = [r for r in rows if r.state in ("failed", "partial")]
    if failures:
        print("\nWhat to do:")
        for r in failures:
            print(f"  {r.name}: {remedy_of(r, config)}")
    if open_deliveries:
        print(f"\nDeliveries pending or failed ({len(open_deliveries)}; `edgeseg deliver --retry` sends the failed "
              "ones again):")
        print(table(DELIVERY_HEADERS, [delivery_cells(d, now) for d in open_deliveries]))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- deliver


def cmd_deliver(args: argparse.Namespace) -> int:
    """``edgeseg deliver [--retry] [--now] [--destination NAME]``: the outbox; failed deliveries made pending again;
    pending ones sent now (by the running watcher, else by this command with the watcher's delivery code)."""
    from edgeseg.errors import EXIT_FAILED, EXIT_OK, WatcherRunningError
    from edgeseg.runtime.watch.lock import StateLock
    from edgeseg.runtime.watch.store import JobStore

    config = state_config(args)
    if not config.store_path.is_file():
        print(f"No job store at {config.store_path}: the watcher has not run with this state folder yet, so there "
              "is nothing to deliver.")
        return EXIT_FAILED
    configured = {d.name for d in config.node.destinations}
    now = time.time()
    lock: StateLock | None = None
    if args.now:  # no watcher holds the state folder: this command sends, and holds the folder meanwhile
        lock = StateLock(config.state_dir)
        try:
            lock.acquire(wait_s=0.2)
        except WatcherRunningError:
            lock = None
    try:
        def work(store: JobStore) -> tuple[Any, ...]:
            retried = store.retry_failed_deliveries(args.destination) if args.retry else 0
            if args.now:
                retried += store.make_due(args.destination)
            return retried, store.delivery_counts(), [d for d in store.deliveries("failed")
                                                      if args.destination is None or d.destination == args.destination]

        answer = with_store(config.store_path, work, readonly=not (args.retry or args.now))
        if isinstance(answer, int):
            return answer
        n, counts, failed = answer
        which = f" to {args.destination}" if args.destination else ""
        if args.destination and args.destination not in configured:
            print(f"Note: {args.destination!r} is not among the configured destinations "
                  f"({', '.join(sorted(configured)) or 'none'}); its deliveries fail again at once unless it is "
                  "configured in watch_config.yaml.")
        print("deliveries: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        if not (args.retry or args.now):
            if failed:
                print(f"\nFailed{which} ({len(failed)}); fix the reason, then `edgeseg deliver --retry`:")
                print(table(DELIVERY_HEADERS, [delivery_cells(d, now) for d in failed]))
            return EXIT_OK
        if n == 0 and not args.now:
            print(f"No failed deliveries{which} to retry.")
            return EXIT_OK
        if args.now:
            n = counts.get("pending", 0) if args.destination is None else n
            if n == 0:
                print(f"Nothing pending{which}.")
                return EXIT_OK
            print(f"{n} deliver{'y is' if n == 1 else 'ies are'} due now{which}.")
        else:
            print(f"{n} failed deliver{'y is' if n == 1 else 'ies are'} pending again{which}.")
        if lock is not None:
            return _send_now(config, args.destination)
        state = liveness(config.state_dir, read_beat(config.state_dir), time.time())
        them = "it" if n == 1 else "them"
        if state.startswith("running"):
            print(f"The watcher is {state}: it sends {them} within seconds; `edgeseg status` shows the outcome.")
        elif state.startswith("NOT RESPONDING"):
            print(f"The watcher is {state}: it sends {them} once it responds again (or after a restart).")
        else:
            print(f"No watcher runs on this state folder ({state}): it sends {them} when it starts next (edgeseg "
                  "watch, or the service); `edgeseg deliver --now` sends them at once.")
        return EXIT_OK
    finally:
        if lock is not None:
            lock.release()


#: rounds ``deliver --now`` sends at most (each round: every due delivery, up to the store's batch of 100)
SEND_NOW_ROUNDS = 50


def _send_now(config: Any, destination: str | None) -> int:
    """``deliver --now`` with no watcher on the state folder (its lock held by this command): the due deliveries are
    sent by the watcher's own delivery code (:class:`~edgeseg.runtime.watch.deliver.DeliveryWorker`, with the
    watcher's settlement of each result), rounds until nothing is due; prints what happened."""
    import threading
    from collections import Counter

    from edgeseg.errors import EXIT_OK, DeliveryError
    from edgeseg.runtime.node.send import tame_pynetdicom_logs
    from edgeseg.runtime.watch.store import FAILED, PENDING, JobStore
    from edgeseg.runtime.watch.worker import delivery_worker

    print("No watcher runs on this state folder: this command sends them now (it holds the state folder until it is "
          "done: a watcher started meanwhile is refused as 'another watcher').")
    tame_pynetdicom_logs()
    started = time.time()
    with JobStore(config.store_path) as store:
        worker = delivery_worker(config, store, threading.Event(), Counter())
        for _ in range(SEND_NOW_ROUNDS):
            if not worker.deliver_due():
                break
        mine = [d for d in store.deliveries()
                if (destination is None or d.destination == destination) and d.updated_at >= started]
        pending = [d for d in store.deliveries(PENDING) if destination is None or d.destination == destination]
        failed = [d for d in mine if d.state == FAILED]
        now = time.time()
        print(f"sent {worker.sent}, failed for good {worker.failed}, still pending {len(pending)}.")
        for d in failed:  # in full: the reason names what to fix (our AE title, a SOP class)
            print(f"FAILED {d.destination} {d.role} {d.job_key}: {d.last_error}")
        if pending:
            print(table(DELIVERY_HEADERS, [delivery_cells(d, now) for d in pending]))
        if failed or pending:
            print("Failed ones: fix what the error names, then `edgeseg deliver --retry --now`. Pending ones are "
                  "retried by the watcher (or the next `edgeseg deliver --now`).")
            return DeliveryError.exit_code
    return EXIT_OK
