"""The hands-free watcher: observer -> scheduler -> workers, with a persistent job store.

Threads (every loop waits on one stop :class:`threading.Event`)::

    watchdog observer ──paths──▶ events queue ──────▶ scheduler thread ──complete series──▶ job queue ──▶ worker(s)
    DICOM listener ──hints──▶ node events queue ──▶   │ Scheduler (scheduler.py)            │ Worker (worker.py)
                                                      │ CompletionTracker (its own)         │ segmenter.plan / .segment
                                                      │ JobStore.decide / discover          │ JobStore.mark_*, outbox
                                                      │ Heartbeat (heartbeat.py)            │ Running (heartbeat.py)
                                                      ◀──────────────────── finished queue ─┘
    delivery thread (deliver.py): sends the outbox; delivery_settled (worker.py) when a round of a series ends

This module is the lifecycle: :class:`Watcher` builds the parts (store, tracker, segmenter, observer, listener,
delivery, :class:`~edgeseg.runtime.watch.scheduler.Scheduler`, :class:`~edgeseg.runtime.watch.worker.Worker`,
:class:`~edgeseg.runtime.watch.heartbeat.Heartbeat`), starts and stops their threads, and handles the signals.

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
* The heartbeat (``<state_dir>/watcher.json``, written by the scheduler thread) also checks that the state folder
  is still there; if it was deleted or replaced the watcher stops itself (:attr:`Watcher.fatal`).
* The status page (``status_page``: :mod:`~edgeseg.runtime.watch.status_page`) is bound before anything else
  starts (a port in use fails the start) and served once the parts are built; the alert thread
  (``alerts.webhook_url``: :mod:`~edgeseg.runtime.watch.alerts`) runs beside the others. Both stop with the rest.
* Stop (SIGTERM, SIGINT, :meth:`Watcher.stop`): the listener, the observer and scheduler stop at once; a running
  series gets ``stop_grace_s`` to finish, then is cancelled at its next progress report, and if it does not report
  it is abandoned: its row stays ``running`` and it runs again at the next start.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from edgeseg.errors import (
    EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, ConfigError, EdgesegError, SeriesInterruptedError, remedy_for,
)
from edgeseg.runtime.segmenter import Segmenter, SeriesSegmenter
from edgeseg.runtime.watch.completion import CompletionTracker
from edgeseg.runtime.watch.config import WatchConfig
from edgeseg.runtime.watch.alerts import Alerter
from edgeseg.runtime.watch.deliver import DeliveryWorker, refuse_untakeable
from edgeseg.runtime.watch.heartbeat import Heartbeat, Running, state_identities
from edgeseg.runtime.watch.jobs import SeriesJob
from edgeseg.runtime.watch.lock import StateLock
from edgeseg.runtime.watch.observer import EnqueueHandler, PathFilter, start_observer
from edgeseg.runtime.watch.retention import Retention
from edgeseg.runtime.watch.scheduler import Scheduler
from edgeseg.runtime.watch.status_page import ReceiveCounter, StatusPage, WatcherView
from edgeseg.runtime.watch.store import JobStore
from edgeseg.runtime.watch.worker import JobRecord, Worker, delivery_worker, write_error

__all__ = ["JobRecord", "Watcher"]

log = logging.getLogger(__name__)


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
        self._jobs: queue.Queue[SeriesJob] = queue.Queue()
        self._finished: queue.SimpleQueue[tuple[SeriesJob, str]] = queue.SimpleQueue()
        self._running = Running()
        self.receiver: Any = None
        self.delivery: DeliveryWorker | None = None
        self._threads: list[threading.Thread] = []
        self._observer: Any = None
        self.poll_interval_s = min(0.5, max(0.05, config.quiet_period_s / 5))
        self.filter = PathFilter(config.roots, config.include, config.exclude,
                                 ignore=(config.state_dir, config.log_dir))
        self.tracker: CompletionTracker | None = None
        self.store: JobStore | None = None
        #: the parts :meth:`start` builds (None before)
        self.scheduler: Scheduler | None = None
        self.worker: Worker | None = None
        self.heartbeat: Heartbeat | None = None
        #: the status page (``status_page.enabled``) and the alert sender (``alerts.webhook_url``), else None
        self.status_page: StatusPage | None = None
        self.alerter: Alerter | None = None
        self.received = ReceiveCounter()
        self.history: list[JobRecord] = []
        self.results: dict[str, Any] = {}
        self.stats: Counter[str] = Counter()
        #: set when the scheduler or a worker loop died (a bug): ``run`` then returns 1
        self.crashed = False
        self._state_lock = StateLock(config.state_dir)

    @property
    def fatal(self) -> EdgesegError | None:
        """The error that made the watcher stop itself because it cannot go on (its state folder was deleted):
        ``run`` raises it. None otherwise."""
        return None if self.heartbeat is None else self.heartbeat.fatal

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
            if self.status_page is not None and not self._threads:
                self.status_page.stop()
            if self.store is not None and not self._threads:
                self.store.close()
            if not self._threads:
                self._state_lock.release()
            raise

    def _start(self) -> None:
        cfg = self.config
        since = time.time()  # alerts: what fails from here on (reconcile's given-up rows included)
        if self.segmenter is None:  # a bad bundle fails at start, not per series
            self.segmenter = Segmenter(cfg.bundle, cfg.segment_options(), ceiling_s=cfg.time_ceiling_s,
                                       latency_path=cfg.latency_path, verify=True)
        self.store = store = JobStore(cfg.store_path)
        state_ids = state_identities(cfg)
        for row in store.reconcile(cfg.max_attempts):
            interrupted = SeriesInterruptedError(row.last_error or "interrupted")
            write_error(row.folder_path, row.name, interrupted, remedy_for(interrupted))
        self.tracker = tracker = CompletionTracker(cfg.quiet_period_s, self.filter, settle_s=self._settle_s,
                                                   clock=self.clock, echoes=cfg.echoes, selection=cfg.selection,
                                                   hint_grace_s=cfg.node.listener.completion_grace_s)
        started_at = time.time()
        if cfg.status_page.enabled and not self.once:  # bound first: a port in use fails the start, nothing runs
            self.status_page = StatusPage(cfg.status_page, tls=cfg.node.listener.tls)
            self.status_page.bind()
        if not self.once:
            self._observer = self._start_observer()
        if cfg.node.destinations:
            refuse_untakeable(cfg)  # doctor's FAIL for a destination that answers but refuses what it is sent
            self.delivery = delivery_worker(cfg, store, self._stop, self.stats)
        if cfg.node.listener.enabled and not self.once:  # last: nothing is acknowledged before the store is open
            from edgeseg.runtime.node.receive import StorageReceiver

            self.receiver = StorageReceiver(cfg.node.listener, self.received.wrap(self._node_events.put))
            self.receiver.start()
        self.heartbeat = Heartbeat(cfg, state_ids, self._stop, running=self._running, tracker=tracker,
                                   jobs=self._jobs, stats=self.stats, started_at=started_at,
                                   listener=None if self.receiver is None else "%s:%d" % self.receiver.address)
        self.scheduler = Scheduler(cfg, store, tracker, events=self._events, node_events=self._node_events,
                                   jobs=self._jobs, finished=self._finished, stop=self._stop, stats=self.stats,
                                   beat=self.heartbeat.write, beat_now=self._running.changed, delivery=self.delivery,
                                   once=self.once, clock=self.clock, poll_interval_s=self.poll_interval_s,
                                   retention=Retention(store, cfg.retention, cfg.roots, cfg.received_root))
        self.worker = Worker(cfg, store, self.segmenter, jobs=self._jobs, finished=self._finished, stop=self._stop,
                             cancel=self._cancel, running=self._running, stats=self.stats, history=self.history,
                             results=self.results, delivery=self.delivery, once=self.once)
        if cfg.alerts.webhook_url is not None:
            self.alerter = Alerter(cfg, store, self._stop, since)
        self._start_threads()
        if self.status_page is not None:
            self.status_page.serve(WatcherView(
                cfg, store, heartbeat=self.heartbeat, running=self._running, jobs=self._jobs, stats=self.stats,
                results=self.results, alive=self.alive, received=self.received))
        log.info("watcher started: roots=%s quiet_period_s=%g observer=%s workers=%d segmenter=%s once=%s",
                 ", ".join(map(str, cfg.roots)), cfg.quiet_period_s, cfg.observer.value, cfg.max_concurrent_series,
                 self.segmenter.name, self.once)

    def _start_observer(self) -> Any:
        cfg = self.config
        handler = EnqueueHandler(self.filter, self._events)
        try:
            return start_observer(cfg.observer, cfg.polling_interval_s, cfg.roots, handler)
        except OSError as err:  # e.g. the inotify watch limit on a large tree
            raise ConfigError(
                f"Cannot watch {', '.join(map(str, cfg.roots))} with {cfg.observer.value} events ({err}). Fix: "
                "set observer: polling in watch_config.yaml (or raise the system's file-watch limit).") from err

    def _start_threads(self) -> None:
        """The scheduler, the delivery thread and ``max_concurrent_series`` workers."""
        assert self.scheduler is not None and self.worker is not None
        self._threads.append(threading.Thread(target=self._guard(self.scheduler.loop), name="edgeseg-scheduler",
                                              daemon=True))
        if self.delivery is not None:
            self._threads.append(threading.Thread(target=self._guard(self.delivery.run), name="edgeseg-delivery",
                                                  daemon=True))
        if self.alerter is not None:
            self._threads.append(threading.Thread(target=self._guard(self.alerter.run), name="edgeseg-alerts",
                                                  daemon=True))
        for i in range(self.config.max_concurrent_series):
            self._threads.append(threading.Thread(target=self._guard(self.worker.loop),
                                                  name=f"edgeseg-worker-{i + 1}", daemon=True))
        for t in self._threads:
            t.start()

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
        if self.status_page is not None:
            self.status_page.stop()
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
                        ", ".join(self._running.keys()))
            self._cancel.set()
            for t in alive:
                t.join(timeout=5)
            alive = [t for t in alive if t.is_alive()]
        if alive:
            log.warning("abandoning %d running series; they stay 'running' in the store and run again at the next "
                        "start: %s", len(alive), ", ".join(self._running.keys()))
        elif self._state_lock.held:  # a second stop() finds the lock released: another watcher may own it now
            if self.heartbeat is not None and self.fatal is None:
                self.heartbeat.write(stopped=True)
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

    def request_stop(self) -> None:
        """Ask the watcher to stop, from any thread, without waiting (what the first stop signal does):
        :meth:`run` then stops it and returns."""
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
            since = None if self.scheduler is None else self.scheduler.idle_since
            if since is not None and self.clock() - since >= settle:
                return True
            if self._stop.is_set() and not self.alive():
                return since is not None
            time.sleep(0.05)
        return False

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
