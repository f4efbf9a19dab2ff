"""The hands-free watcher: observer -> scheduler -> workers, with a persistent job store.

Threads (every loop waits on one stop :class:`threading.Event`)::

    watchdog observer ──paths──▶ events queue ──▶ scheduler thread ──complete series──▶ job queue ──▶ worker(s)
                                                   │ CompletionTracker (owned here)        │ segmenter
                                                   │ JobStore.decide / discover            │ JobStore.mark_*
                                                   ◀──────────── finished queue ───────────┘

* The observer's handler only enqueues paths. At start the roots are scanned once (files that arrived while the
  watcher was down), and again every ``rescan_interval_s`` as a safety net for lost events.
* The scheduler is the only user of the :class:`CompletionTracker`; it asks the store whether a complete series
  should run (not repeated when done with the same input; a failing series is given up after ``max_attempts``)
  and hands it to up to ``max_concurrent_series`` workers.
* A worker plans the run against the time budget, calls the segmenter and records the outcome. Any exception
  (EdgesegError or not) becomes a ``failed`` row and ``<name>.edgeseg-error.json`` beside the series; a failure
  is retried with back-off until ``max_attempts``. The watcher does not die on bad input. A result that lacks a
  requested output (``status: partial`` in its manifest) is recorded as ``partial``, not ``done``: the row says
  which output is missing and why, and so does an error file (kind ``partial``) beside the published results; it
  is not retried until the series' files change.
* DICOM node (``dicom_listener``, ``destinations``; off unless configured): the listener
  (:class:`~edgeseg.runtime.node.receive.StorageReceiver`) writes received instances into a root, and its hints
  (instance stored, association ended) reach the tracker through the scheduler, so a series sent in one go is
  complete without waiting the full quiet period. A finished result's DICOM files are recorded for each destination
  in the same store transaction as ``done``/``partial``, and a delivery thread
  (:class:`~edgeseg.runtime.watch.deliver.DeliveryWorker`) sends them, with retries, across restarts.
* Stop (SIGTERM, SIGINT, :meth:`Watcher.stop`): the listener, the observer and scheduler stop at once; a running
  series gets ``stop_grace_s`` to finish, then is cancelled at its next progress report, and if it does not report it is
  abandoned: its row stays ``running`` and it runs again at the next start.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeseg.errors import (
    EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, BundleError, ConfigError, DeliveryError, EdgesegError, InvalidSeriesError,
    PartialResultError, SeriesInterruptedError, StateStoreError, TimeCeilingError, kind_of, remedy_for,
)
from edgeseg.runtime.plan import Plan
from edgeseg.runtime.read import DICOM, NIFTI, PARREC
from edgeseg.runtime.read.limits import check_frames, check_nifti_header, check_voxels
from edgeseg.runtime.segmenter import Segmenter, SeriesCancelled, SeriesSegmenter
from edgeseg.runtime.node.settings import RESULT_ROLE
from edgeseg.runtime.watch.completion import CompletionTracker
from edgeseg.runtime.watch.config import WatchConfig
from edgeseg.runtime.watch.deliver import DeliveryWorker, refuse_untakeable
from edgeseg.runtime.watch.jobs import INVALID, SeriesJob
from edgeseg.runtime.watch.lock import StateLock
from edgeseg.runtime.watch.observer import EnqueueHandler, PathFilter, start_observer
from edgeseg.runtime.watch.store import FAILED, DeliveryRequest, JobStore
from edgeseg.runtime.write import PARTIAL, SegmentResult, describe_missing
from edgeseg.runtime.write.atomic import clear_error_file, write_error_file, write_json_atomic

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], None]


@dataclass(frozen=True)
class JobRecord:
    """One finished attempt, kept in memory for ``--once`` summaries and benchmarks."""

    key: str
    name: str
    ok: bool
    seconds: float
    output: Path | None
    error: str | None
    plan: Plan | None
    budget_s: float | None
    #: segmented, but a requested output is missing (``error`` names it): ``ok`` and ``partial``
    partial: bool = False

    @property
    def within_budget(self) -> bool | None:
        return None if self.budget_s is None else self.seconds <= self.budget_s


def _remove_stale_temporaries(job: SeriesJob) -> None:
    """Remove ``.<name>.edgeseg.partial-*`` / ``.old-*`` folders a killed run of this series left behind (the
    writer cleans up after itself unless the process is killed). Only hidden temporaries of this very name."""
    for pattern in (f".{job.name}.edgeseg.partial-*", f".{job.name}.edgeseg.old-*"):
        for stale in job.folder.glob(pattern):
            log.info("removing a temporary folder left by an interrupted run: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _identity(path: Path) -> tuple[int, int]:
    """(device, inode) of a file or folder: a folder deleted and created again has another identity."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


class Watcher:
    """Watches ``config.roots`` and segments every series that completes there.

    ``segmenter``: the :class:`~edgeseg.runtime.segmenter.SeriesSegmenter` to use as it is (tests inject fakes
    derived from it, ``tests/helpers/fake_segmenter.py``); default: a
    :class:`~edgeseg.runtime.segmenter.Segmenter` of the configured bundle and settings, built at :meth:`start`.
    ``once``: no observer; scan, process what is there, stop when idle.
    """

    def __init__(self, config: WatchConfig, segmenter: SeriesSegmenter | None = None, *, once: bool = False,
                 settle_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.once = once
        self.clock = clock
        self.segmenter = segmenter
        self._settle_s = settle_s
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._signal: int | None = None
        self._events: queue.SimpleQueue[Path] = queue.SimpleQueue()
        #: the DICOM listener's hints (Stored, AssociationEnded), drained by the scheduler before file events
        self._node_events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.receiver: Any = None
        self.delivery: DeliveryWorker | None = None
        self._jobs: queue.Queue[SeriesJob] = queue.Queue()
        self._finished: queue.SimpleQueue[tuple[SeriesJob, str]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._observer: Any = None
        self._inflight: set[str] = set()
        self._rerun: dict[str, SeriesJob] = {}
        self._retries: dict[str, tuple[float, SeriesJob]] = {}
        #: complete series whose bookkeeping failed (job store error, disk full): key -> (due, failures, job)
        self._requeued: dict[str, tuple[float, int, SeriesJob]] = {}
        self._running: dict[str, float] = {}
        self._idle_since: float | None = None
        self._scanned = threading.Event()
        self._beat_now = threading.Event()
        self._started_at = 0.0
        self._lock = threading.Lock()
        self.poll_interval_s = min(0.5, max(0.05, config.quiet_period_s / 5))
        self.filter = PathFilter(config.roots, config.include, config.exclude,
                                 ignore=(config.state_dir, config.log_dir))
        self.tracker: CompletionTracker | None = None
        self.store: JobStore | None = None
        self.history: list[JobRecord] = []
        self.results: dict[str, Any] = {}
        self.stats: Counter[str] = Counter()
        #: set when the scheduler or a worker loop died (a bug): ``run`` then returns 1
        self.crashed = False
        #: set when the watcher stopped itself because it cannot go on (state folder deleted): ``run`` raises it
        self.fatal: EdgesegError | None = None
        self._state_lock = StateLock(config.state_dir)
        self._state_ids: dict[Path, tuple[int, int]] = {}

    # --------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Open the store, reconcile it, resolve the segmenter, start observer, scheduler and workers.

        Raises :class:`EdgesegError` (bundle, store, missing segmenter) before any thread is started.
        """
        if self._threads:
            raise RuntimeError("watcher already started")
        self._state_lock.acquire()  # before the store is opened or reconciled: one watcher per state folder
        try:
            self._start()
        except BaseException:
            if self.store is not None and not self._threads:
                self.store.close()
            if not self._threads:
                self._state_lock.release()
            raise

    def _start(self) -> None:
        cfg = self.config
        if self.segmenter is None:  # a bad bundle fails at start, not per series
            self.segmenter = Segmenter(cfg.bundle, cfg.segment_options(), ceiling_s=cfg.time_ceiling_s,
                                       latency_path=cfg.latency_path, verify=True)
        self.store = JobStore(cfg.store_path)
        self._state_ids = {p: _identity(p) for p in (cfg.state_dir, cfg.store_path)}
        for row in self.store.reconcile(cfg.max_attempts):
            interrupted = SeriesInterruptedError(row.last_error or "interrupted")
            self._write_error(row.folder_path, row.name, interrupted, remedy_for(interrupted))
        self.tracker = CompletionTracker(cfg.quiet_period_s, self.filter, settle_s=self._settle_s, clock=self.clock,
                                         echoes=cfg.echoes, hint_grace_s=cfg.node.listener.completion_grace_s)
        self._started_at = time.time()
        if not self.once:
            handler = EnqueueHandler(self.filter, self._events)
            try:
                self._observer = start_observer(cfg.observer, cfg.polling_interval_s, cfg.roots, handler)
            except OSError as err:  # e.g. the inotify watch limit on a large tree
                raise ConfigError(
                    f"Cannot watch {', '.join(map(str, cfg.roots))} with {cfg.observer.value} events ({err}). Fix: "
                    "set observer: polling in watch_config.yaml (or raise the system's file-watch limit).") from err
        if cfg.node.destinations:
            refuse_untakeable(cfg)  # doctor's FAIL for a destination that answers but refuses what it is sent
            listener_ae = cfg.node.listener.ae_title if cfg.node.listener.enabled else None
            self.delivery = DeliveryWorker(self.store, cfg.node.destinations, cfg.node.delivery, listener_ae,
                                           self._stop, on_settled=self._delivery_settled)
        if cfg.node.listener.enabled and not self.once:  # last: nothing is acknowledged before the store is open
            from edgeseg.runtime.node.receive import StorageReceiver

            self.receiver = StorageReceiver(cfg.node.listener, self._node_events.put)
            self.receiver.start()
        sched = threading.Thread(target=self._guard(self._schedule_loop), name="edgeseg-scheduler", daemon=True)
        self._threads.append(sched)
        if self.delivery is not None:
            self._threads.append(threading.Thread(target=self._guard(self.delivery.run), name="edgeseg-delivery",
                                                  daemon=True))
        for i in range(cfg.max_concurrent_series):
            self._threads.append(threading.Thread(target=self._guard(self._work_loop), name=f"edgeseg-worker-{i + 1}",
                                                  daemon=True))
        for t in self._threads:
            t.start()
        log.info("watcher started: roots=%s quiet_period_s=%g observer=%s workers=%d segmenter=%s once=%s",
                 ", ".join(map(str, cfg.roots)), cfg.quiet_period_s, cfg.observer.value, cfg.max_concurrent_series,
                 self.segmenter.name, self.once)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop everything; a running series gets ``stop_grace_s`` (or ``timeout``) to finish. True when every
        thread ended (False: a series was abandoned and stays ``running`` in the store, to be redone)."""
        grace = self.config.stop_grace_s if timeout is None else timeout
        self._stop.set()
        if self.receiver is not None:  # first: a console is told nothing more is stored, it keeps the rest
            try:
                self.receiver.stop()
            except Exception:  # noqa: BLE001 - stopping must go on
                log.exception("DICOM listener did not stop cleanly")
            self.receiver = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
        if not self._threads:  # never started, or refused at start: nothing of ours to record or release
            return True
        deadline = time.monotonic() + grace
        for t in self._threads:
            while t.is_alive() and time.monotonic() < deadline and not self._cancel.is_set():
                t.join(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
        if self._cancel.is_set():
            log.warning("second stop signal: cancelling the running series now")
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            log.warning("series still running after %.0f s grace, cancelling at its next progress report: %s", grace,
                        ", ".join(self._running))
            self._cancel.set()
            for t in alive:
                t.join(timeout=5)
            alive = [t for t in alive if t.is_alive()]
        if alive:
            log.warning("abandoning %d running series; they stay 'running' in the store and run again at the next "
                        "start: %s", len(alive), ", ".join(self._running))
        elif self._state_lock.held:  # a second stop() finds the lock released: another watcher may own it now
            if self.fatal is None:
                self._write_heartbeat(stopped=True)
            if self.store is not None:
                self.store.close()
            self._state_lock.release()  # kept while an abandoned series may still run in this process
        log.info("watcher stopped: done=%d partial=%d failed=%d skipped=%d", self.stats["done"], self.stats["partial"],
                 self.stats["failed"], self.stats["skipped"])
        return not alive

    def run(self) -> int:
        """Start, block until SIGTERM/SIGINT (or, with ``once``, until everything present is processed), stop.

        Returns 0; 1 when ``once`` and a series failed in this run, or when a watcher thread crashed;
        :data:`~edgeseg.errors.EXIT_PARTIAL` when ``once`` and none failed but a result is partial (a requested
        output missing, or a delivery refused for good). Raises the
        error that made the watcher stop itself (:attr:`fatal`, e.g. its state folder was deleted).
        """
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # before any thread runs a series
            sigs = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])
            for sig in sigs:
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            self.start()
            while not self._stop.wait(0.5):
                pass
            if self._signal is not None:
                log.info("stop requested (signal %d): finishing the running series, then stopping (a second "
                         "signal cancels it)", self._signal)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.fatal is not None:
            raise self.fatal
        if self.crashed or (self.once and self.stats["failed"]):
            return EXIT_FAILED
        return EXIT_PARTIAL if self.once and (self.stats["partial"] or self.stats["undelivered"]) else EXIT_OK

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only set events here: a handler that logs can interrupt the main thread inside a write to the same
        # stream ("reentrant call inside BufferedWriter") and kill the watcher. The main thread logs the stop.
        if self._stop.is_set():
            self._cancel.set()
            return
        self._signal = signum
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def alive(self) -> bool:
        """True while the scheduler and every worker thread run."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def wait_idle(self, timeout: float, settle_s: float | None = None) -> bool:
        """Wait until nothing is pending and the state has stayed so for ``settle_s`` (default: long enough for a
        polling observer to have delivered recent changes). False on timeout."""
        settle = settle_s if settle_s is not None else (
            3 * self.poll_interval_s + (self.config.polling_interval_s if self.config.observer.value == "polling"
                                        else 0.2))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            since = self._idle_since
            if since is not None and self.clock() - since >= settle:
                return True
            if self._stop.is_set() and not self.alive():
                return since is not None
            time.sleep(0.05)
        return False

    # --------------------------------------------------------------------------------------------- scheduler

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except BaseException:  # noqa: BLE001 - a dying loop must at least say so
                log.exception("%s crashed; stopping the watcher", threading.current_thread().name)
                self.crashed = True
                self._stop.set()
                raise
        return run

    def _schedule_loop(self) -> None:
        assert self.tracker is not None and self.store is not None
        for root in self.config.roots:
            try:
                n = self.tracker.scan(root, initial=True)
                log.info("initial scan: root=%s files=%d", root, n)
            except OSError as err:
                log.error("cannot scan root %s: %s", root, err)
        self._scanned.set()
        last_rescan = self.clock()
        last_beat = 0.0
        while not self._stop.is_set():
            try:
                self._drain_node_events()
                self._drain_events()
                self._drain_finished()
                now = self.clock()
                if (not self.once and self.config.rescan_interval_s
                        and now - last_rescan >= self.config.rescan_interval_s):
                    last_rescan = now
                    for root in self.config.roots:
                        self.tracker.scan(root)
                result = self.tracker.poll()
                for ref in result.discovered:
                    try:
                        self.store.discover(ref.key, ref.kind, ref.folder, ref.name, ref.uid, ref.description)
                    except Exception as err:  # noqa: BLE001 - only a note; the row is written when it completes
                        log.error("series not recorded as discovered (it is when complete): key=%s error=%s: %s",
                                  ref.key, type(err).__name__, err)
                for job in result.complete:  # each on its own: one failing never drops the others
                    self._dispatch_safely(job)
                self._dispatch_due_retries(now)
                self._dispatch_requeued(now)
                self._update_idle(now)
                if now - last_beat >= 2.0 or self._beat_now.is_set():
                    last_beat = now
                    self._beat_now.clear()
                    self._write_heartbeat()
                if self.once and self._idle_since is not None:
                    log.info("--once: everything present is processed")
                    self._stop.set()
                    break
            except Exception:  # noqa: BLE001 - the scheduler never dies on one bad iteration
                log.exception("scheduler iteration failed; continuing")
            self._stop.wait(self.poll_interval_s)

    def _drain_node_events(self) -> None:
        from edgeseg.runtime.node.receive import AssociationEnded, Stored

        assert self.tracker is not None
        for _ in range(100_000):
            try:
                event = self._node_events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, Stored):
                self.tracker.received(event.path, event.association)
            elif isinstance(event, AssociationEnded):
                self.tracker.association_ended(event.association, event.folders)

    def _drain_events(self) -> None:
        assert self.tracker is not None
        for _ in range(100_000):
            try:
                path = self._events.get_nowait()
            except queue.Empty:
                return
            self.tracker.touch(path)

    def _drain_finished(self) -> None:
        while True:
            try:
                job, outcome = self._finished.get_nowait()
            except queue.Empty:
                return
            self._inflight.discard(job.key)
            if outcome == "retry":
                delay = self.config.quiet_period_s * (2 ** max(0, self._attempts(job.key) - 1))
                self._retries[job.key] = (self.clock() + delay, job)
                log.info("series will be retried: key=%s in_s=%.0f", job.key, delay)
            again = self._rerun.pop(job.key, None)
            if again is not None:
                self._retries.pop(job.key, None)
                self._dispatch_safely(again)

    def _attempts(self, key: str) -> int:
        try:
            row = self.store.get(key) if self.store else None
        except Exception as err:  # noqa: BLE001 - a store error must not lose the finished series' retry
            log.error("attempts of series unknown (job store error), assuming 1: key=%s error=%s: %s", key,
                      type(err).__name__, err)
            return 1
        return row.attempts if row else 0

    def _dispatch_safely(self, job: SeriesJob) -> None:
        """:meth:`_dispatch` one series on its own. A bookkeeping failure (a job store error such as "database or
        disk is full", a bug) re-queues that series with a logged error: it is dispatched again at a later poll
        (back-off up to 60 s; with ``once``, given up after ``max_attempts`` tries and counted as failed), and the
        other series are not affected."""
        try:
            self._dispatch(job)
        except Exception as err:  # noqa: BLE001 - see the docstring
            failures = self._requeued.get(job.key, (0.0, 0, job))[1] + 1
            if self.once and failures >= self.config.max_attempts:
                self._requeued.pop(job.key, None)
                self.stats["failed"] += 1
                log.error("series not dispatched after %d tries (job store error), left for the next start: key=%s "
                          "error=%s: %s", failures, job.key, type(err).__name__, err)
                return
            delay = min(60.0, self.poll_interval_s * 2 ** failures)
            self._requeued[job.key] = (self.clock() + delay, failures, job)
            log.error("series not dispatched (job store error), trying again in %.1f s: key=%s error=%s: %s", delay,
                      job.key, type(err).__name__, err, exc_info=not isinstance(err, sqlite3.Error))
        else:
            self._requeued.pop(job.key, None)

    def _dispatch_requeued(self, now: float) -> None:
        for due, _, job in list(self._requeued.values()):
            if due <= now:
                self._dispatch_safely(job)

    def _dispatch(self, job: SeriesJob) -> None:
        assert self.store is not None
        if job.key in self._inflight:
            log.info("series changed while being segmented, it will run again after: key=%s", job.key)
            self._rerun[job.key] = job
            return
        self._retries.pop(job.key, None)
        assert self.tracker is not None
        if not all(self.tracker.candidates.allows(p) for p in {job.folder, job.source}):
            return  # became a symbolic link since it was scanned (logged once by the filter): never written through
        if job.ref is not None and job.ref.stack is not None:  # one 3-D stack: its series' row was only 'discovered'
            self.store.forget_discovered(job.ref.series_key)  # (also after a restart, when the stack is not re-run)
        decision = self.store.decide(job.key, job.fingerprint, self.config.max_attempts)
        if not decision.run:
            self.stats["skipped"] += 1
            log.info("series not run: key=%s reason=%s", job.key, decision.reason)
            return
        self.store.mark_complete(job.key, job.kind, job.folder, job.name, job.fingerprint, len(job.files),
                                 job.series_uid, job.description)
        self._inflight.add(job.key)
        log.info("series queued: key=%s reason=%s", job.key, decision.reason)
        self._jobs.put(job)

    def _dispatch_due_retries(self, now: float) -> None:
        assert self.store is not None
        for key, (due, job) in list(self._retries.items()):
            if due > now:
                continue
            del self._retries[key]
            try:
                row = self.store.get(key)
            except Exception as err:  # noqa: BLE001 - keep the retry; the store may answer at a later poll
                self._retries[key] = (now + max(1.0, self.poll_interval_s), job)
                log.error("retry of series postponed (job store error): key=%s error=%s: %s", key,
                          type(err).__name__, err)
                continue
            if row is None or row.fingerprint != job.fingerprint:
                continue  # the input changed meanwhile: the tracker hands out the new version itself
            self._dispatch(job)

    def _update_idle(self, now: float) -> None:
        assert self.tracker is not None
        idle = (self._scanned.is_set() and self._events.empty() and self._finished.empty() and self._jobs.empty()
                and self._node_events.empty() and not self._inflight and not self._retries and not self._rerun
                and not self._requeued and self.tracker.idle()
                and (self.delivery is None or not self.delivery.busy))
        if not idle:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now

    def _state_problem(self) -> StateStoreError | None:
        """None while the state folder and the job store opened at start are still there (same identity)."""
        cfg = self.config
        for path, ident in self._state_ids.items():
            try:
                same = _identity(path) == ident
            except FileNotFoundError:
                same = False
            except OSError:
                continue  # e.g. a share that does not answer now: not proof that it is gone
            if not same:
                return StateStoreError(
                    f"The state folder {cfg.state_dir} (job store {cfg.store_path}) was deleted or replaced while the "
                    "watcher ran; the watcher stopped, because without it it no longer knows which series are done "
                    "and would write into deleted files. Fix: restore the state folder (move it back from where it "
                    "went, or from a backup) and start the watcher again. Starting with an empty state folder "
                    "instead re-segments every series under the roots.")
        return None

    def _write_heartbeat(self, stopped: bool = False) -> None:
        """``<state_dir>/watcher.json``: pid, liveness and the open series, for ``edgeseg status``. Before a live
        beat, checks that the state folder and job store are still the ones opened at start; if not, stops the
        watcher with :attr:`fatal` set."""
        if self.fatal is not None:
            return
        if not stopped and self._state_ids:
            problem = self._state_problem()
            if problem is not None:
                self.fatal = problem
                log.error("%s", problem)
                self._stop.set()
                return
        with self._lock:
            running = sorted(self._running)
        try:
            data = {
                "pid": os.getpid(),
                "started_at": self._started_at,
                "heartbeat_at": time.time(),
                "stopped": stopped,
                "roots": [str(r) for r in self.config.roots],
                "running": running,
                "open_series": self.tracker.pending() if self.tracker else [],
                "queued": self._jobs.qsize(),
                "stats": dict(self.stats),
                #: the DICOM listener's bound address, "host:port" (None: no listener)
                "listener": (None if self.receiver is None else "%s:%d" % self.receiver.address),
            }
            write_json_atomic(self.config.state_dir / "watcher.json", data, indent=1)
        except OSError as err:
            log.debug("heartbeat not written: %s", err)

    # ------------------------------------------------------------------------------------------------ workers

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            if self._stop.is_set():  # stays 'complete' in the store: found again at the next start
                self._finished.put((job, "not started"))
                break
            outcome = "failed"
            try:
                outcome = self._run(job)
            except Exception:  # noqa: BLE001 - bookkeeping failed (store, disk); keep the worker alive
                log.exception("worker could not record series %s", job.key)
            finally:
                self._finished.put((job, outcome))

    def _progress(self, job: SeriesJob) -> ProgressCallback:
        def progress(stage: str, fraction: float) -> None:
            log.debug("progress: key=%s stage=%s fraction=%.2f", job.key, stage, fraction)
        return progress

    def _check_limits(self, job: SeriesJob) -> None:
        """Refuse (:class:`SeriesTooLargeError`) a series whose headers promise more than ``limits`` allow; header
        work only (the reader bounds the decompression itself)."""
        limits = self.config.limits
        if job.kind == NIFTI:
            check_nifti_header(job.source, limits)
            return
        what = f"Series {job.series_uid or job.name}" if job.kind == DICOM else str(job.key)
        if job.kind == DICOM:
            check_frames(len(job.image_files), what, limits)
        if job.geometry is not None and job.kind in (DICOM, PARREC):
            check_voxels(tuple(job.geometry.shape), what, limits)

    def _run(self, job: SeriesJob) -> str:
        assert self.store is not None and self.segmenter is not None
        cfg = self.config
        for note in job.notes:
            log.warning("series note: key=%s %s", job.key, note)
        if job.skip is not None:
            self.store.forget(job.key)
            self.stats["skipped"] += 1
            log.info("series skipped: key=%s reason=%s", job.key, job.skip)
            return "skipped"
        plan = None
        refused: EdgesegError | None = None
        if job.problem is None and job.kind != INVALID:
            try:
                self._check_limits(job)
            except InvalidSeriesError as err:  # SeriesTooLargeError, or a header that no longer reads
                refused = err
        if refused is None and job.problem is None and job.kind != INVALID:
            # planned here (from the headers) to be recorded with the run; the segmenter refuses one over the ceiling
            plan = self.segmenter.plan(job.geometry, len(job.image_files) if job.kind == DICOM else 0, job.key)
        _remove_stale_temporaries(job)
        attempt = self.store.mark_running(job.key, plan.to_dict() if plan else None, cfg.time_budget_s,
                                          plan.predicted_s if plan else None)
        with self._lock:
            self._running[job.key] = time.time()
        self._beat_now.set()
        t0 = time.perf_counter()
        try:
            if job.problem is not None or job.ref is None:
                raise InvalidSeriesError(f"{job.problem or job.key}.")
            if refused is not None:
                raise refused
            result = self.segmenter.segment(job.ref, plan=plan, progress=self._progress(job), cancel=self._cancel)
        except SeriesCancelled:
            self.store.mark_cancelled(job.key)
            log.info("series cancelled by stop request; it runs again at the next start: key=%s", job.key)
            return "cancelled"
        except Exception as err:  # noqa: BLE001 - every failure is recorded, none stops the watcher
            seconds = time.perf_counter() - t0
            return self._fail(job, err, attempt, seconds, plan)
        finally:
            with self._lock:
                self._running.pop(job.key, None)
            self._beat_now.set()
        seconds = time.perf_counter() - t0
        output = result.output_dir
        missing = result.missing_outputs
        partial = result.status == PARTIAL or bool(missing)
        message = ""
        if partial:
            message = (f"{describe_missing(missing) or 'a requested output was not written (see manifest.json)'}. "
                       f"The series was segmented: the masks and the other results are in {output}.")
            self.store.mark_partial(job.key, output, seconds, message, deliveries=self._deliveries(job, result))
            incomplete = PartialResultError(message)
            self._write_error(job.folder, job.name, incomplete, f"{remedy_for(incomplete)} The watcher tries again "
                              "when the files change.")
        else:
            self.store.mark_done(job.key, output, seconds, deliveries=self._deliveries(job, result))
            try:
                clear_error_file(job.folder, job.name)
            except (OSError, EdgesegError) as err:
                log.warning("old error file not removed: key=%s error=%s", job.key, err)
        if self.delivery is not None:
            self.delivery.wake()
        self.results[job.key] = result
        over = "" if cfg.time_budget_s is None or seconds <= cfg.time_budget_s else " OVER BUDGET"
        if partial:
            self.stats["partial"] += 1
            self.history.append(JobRecord(job.key, job.name, True, seconds, output, message, plan, cfg.time_budget_s,
                                          partial=True))
            log.warning("series partial: key=%s seconds=%.1f output=%s%s missing=%s", job.key, seconds, output, over,
                        describe_missing(missing))
            return "partial"
        self.stats["done"] += 1
        self.history.append(JobRecord(job.key, job.name, True, seconds, output, None, plan, cfg.time_budget_s))
        log.info("series done: key=%s seconds=%.1f output=%s%s", job.key, seconds, output, over)
        return "done"

    def _deliveries(self, job: SeriesJob, result: SegmentResult) -> list[DeliveryRequest]:
        """The result's DICOM files for each destination (by its ``send`` roles), with their SOP Instance UIDs."""
        destinations = self.config.node.destinations
        files = result.files
        if not destinations or not files:
            return []
        from pydicom import dcmread

        out: list[DeliveryRequest] = []
        uids: dict[Path, str] = {}
        for destination in destinations:
            for role in destination.send:
                path = files.get(RESULT_ROLE[role])
                if path is None:
                    continue
                path = Path(path)
                if path not in uids:
                    try:
                        uids[path] = str(dcmread(path, stop_before_pixels=True,
                                                 specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                    except Exception as err:  # noqa: BLE001 - an unreadable result is not sent; say so
                        log.error("result file not delivered (unreadable): key=%s file=%s error=%s", job.key, path,
                                  err)
                        continue
                out.append(DeliveryRequest(destination.name, role, path, uids[path]))
        return out

    def _delivery_settled(self, key: str) -> None:
        """(delivery thread) The deliveries of ``key``'s result ended a round: one refused for good makes the series
        partial, with ``<name>.edgeseg-error.json`` (kind ``delivery``) beside it; once a retry delivered them all, a
        series that was partial only for that is done again and the error file goes."""
        assert self.store is not None
        row = self.store.get(key)
        if row is None:
            return
        failed = [d for d in self.store.deliveries_of(key) if d.state == FAILED]
        if failed:
            message = "; ".join(f"{d.role.upper()} not delivered to {d.destination}: {d.last_error}" for d in failed)
            self.store.mark_undelivered(key, message)
            self.stats["undelivered"] += 1
            self._write_error(row.folder_path, row.name, DeliveryError(message),
                              f"{remedy_for(DeliveryError)} The masks and the other results are in {row.output_dir}.")
        elif self.store.mark_delivered(key):
            try:
                clear_error_file(row.folder_path, row.name)
            except (OSError, EdgesegError) as err:
                log.warning("old error file not removed: key=%s error=%s", key, err)

    def _fail(self, job: SeriesJob, err: Exception, attempt: int, seconds: float, plan: Plan | None) -> str:
        assert self.store is not None
        cfg = self.config
        # fails the same way every time: bad input (no retry until the files change), or a device, precision or
        # model the PC or the bundle does not have (every series fails until the configuration is corrected)
        unrunnable = isinstance(err, (ConfigError, BundleError))
        deterministic = job.problem is not None or unrunnable or isinstance(err, (InvalidSeriesError, TimeCeilingError))
        kind = kind_of(err)
        if isinstance(err, EdgesegError):
            log.error("series failed: key=%s kind=%s attempt=%d/%d error=%s", job.key, kind, attempt,
                      cfg.max_attempts, err)
        else:
            log.exception("series failed with an unexpected error: key=%s attempt=%d/%d", job.key, attempt,
                          cfg.max_attempts)
        message = str(err) or type(err).__name__
        self.store.mark_failed(job.key, kind, message, seconds, give_up=deterministic, max_attempts=cfg.max_attempts)
        final = deterministic or attempt >= cfg.max_attempts or self.once
        if unrunnable:
            retry_text = ("Not retried: every series fails this way until the configuration or the bundle is "
                          "corrected; then restart the watcher and re-copy this series.")
        elif deterministic:
            retry_text = "The watcher tries again when the files change."
        elif attempt >= cfg.max_attempts:
            retry_text = (f"Attempt {attempt} of {cfg.max_attempts}: given up. Change or re-copy the series to try "
                          "again.")
        elif self.once:
            retry_text = f"Attempt {attempt} of {cfg.max_attempts}; the next start of the watcher tries again."
        else:
            retry_text = f"Attempt {attempt} of {cfg.max_attempts}; the watcher tries again later by itself."
        also = f" Also noted: {' '.join(job.notes)}" if job.notes else ""
        remedy = remedy_for(err, device=cfg.device, folder=job.folder, log_file=cfg.log_file)
        self._write_error(job.folder, job.name, err, f"{remedy} {retry_text}{also}")
        self.stats["failed"] += 1
        self.history.append(JobRecord(job.key, job.name, False, seconds, None, message, plan, cfg.time_budget_s))
        return "failed" if final else "retry"

    def _write_error(self, folder: Path, name: str, err: BaseException, what_to_do: str) -> None:
        try:
            write_error_file(folder, name, err, what_to_do)
        except Exception as werr:  # noqa: BLE001 - a read-only folder must not stop the watcher
            log.error("error file not written: folder=%s name=%s error=%s", folder, name, werr)
