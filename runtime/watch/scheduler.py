"""The watcher's scheduler thread: from file events and the DICOM listener's hints to complete series for the
workers.

Each poll drains the listener's hints, the observer's paths and the workers' finished jobs, rescans the roots every
``rescan_interval_s``, asks the :class:`~edgeseg.runtime.watch.completion.CompletionTracker` (used by this thread
only) which series completed, and dispatches them: the job store decides whether a complete series runs (not again
when done with the same input; a failing series is given up after ``max_attempts``), then it goes on the job queue.
A series that changes while it is segmented runs again after; a failed attempt is retried with back-off; a series
whose bookkeeping failed (a job store error) is re-queued. The scheduler also notes when the watcher is idle, writes
the heartbeat, and with ``once`` stops the watcher once everything present is processed.
"""
from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from edgeseg.runtime.watch.completion import CompletionTracker
from edgeseg.runtime.watch.config import WatchConfig
from edgeseg.runtime.watch.deliver import DeliveryWorker
from edgeseg.runtime.watch.jobs import SeriesJob
from edgeseg.runtime.watch.retention import Retention
from edgeseg.runtime.watch.store import JobStore

log = logging.getLogger(__name__)

#: seconds between live heartbeats (one is also written at once when a series starts or ends)
HEARTBEAT_INTERVAL_S = 2.0


class Scheduler:
    """The scheduling loop (:meth:`loop`, the scheduler thread), until ``stop`` is set.

    ``events``: paths from the observer; ``node_events``: the DICOM listener's hints (``Stored``,
    ``AssociationEnded``), drained before file events; ``jobs``: series for the workers, which put each back on
    ``finished`` with its outcome. ``beat``: writes the heartbeat, every few seconds and at once when ``beat_now``
    is set. ``delivery``: with pending deliveries the watcher is not idle. ``stats``: counts ``skipped`` (and, with
    ``once``, ``failed`` for a series that could not be dispatched). ``retention``: the retention policy, applied
    every ``retention.interval_s`` (:mod:`edgeseg.runtime.watch.retention`).
    """

    def __init__(self, config: WatchConfig, store: JobStore, tracker: CompletionTracker, *,
                 events: queue.SimpleQueue[Path], node_events: queue.SimpleQueue[Any],
                 jobs: queue.Queue[SeriesJob], finished: queue.SimpleQueue[tuple[SeriesJob, str]],
                 stop: threading.Event, stats: Counter[str], beat: Callable[[], None], beat_now: threading.Event,
                 delivery: DeliveryWorker | None = None, once: bool = False,
                 clock: Callable[[], float], poll_interval_s: float, retention: Retention | None = None) -> None:
        self.config = config
        self.store = store
        self.tracker = tracker
        self.events = events
        self.node_events = node_events
        self.jobs = jobs
        self.finished = finished
        self.stop = stop
        self.stats = stats
        self.beat = beat
        self.beat_now = beat_now
        self.delivery = delivery
        self.once = once
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.retention = retention
        #: clock time since which nothing is pending (None: something is)
        self.idle_since: float | None = None
        self._scanned = threading.Event()
        self._last_rescan = 0.0
        self._last_beat = 0.0
        self._inflight: set[str] = set()
        self._rerun: dict[str, SeriesJob] = {}
        self._retries: dict[str, tuple[float, SeriesJob]] = {}
        #: complete series whose bookkeeping failed (job store error, disk full): key -> (due, failures, job)
        self._requeued: dict[str, tuple[float, int, SeriesJob]] = {}

    # ------------------------------------------------------------------------------------------------ loop

    def loop(self) -> None:
        """The scheduler thread: the initial scan, then one :meth:`_poll` every ``poll_interval_s``."""
        self._initial_scan()
        self._last_rescan = self.clock()
        while not self.stop.is_set():
            try:
                self._poll()
                if self.once and self.idle_since is not None:
                    log.info("--once: everything present is processed")
                    self.stop.set()
                    break
            except Exception:  # noqa: BLE001 - the scheduler never dies on one bad iteration
                log.exception("scheduler iteration failed; continuing")
            self.stop.wait(self.poll_interval_s)

    def _initial_scan(self) -> None:
        for root in self.config.roots:
            try:
                n = self.tracker.scan(root, initial=True)
                log.info("initial scan: root=%s files=%d", root, n)
            except OSError as err:
                log.error("cannot scan root %s: %s", root, err)
        self._scanned.set()

    def _poll(self) -> None:
        """One iteration: drain the queues, rescan when due, dispatch what completed and what is due again, note
        whether the watcher is idle, beat when due."""
        self._drain_node_events()
        self._drain_events()
        self._drain_finished()
        now = self.clock()
        self._rescan_if_due(now)
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
        if self.retention is not None:  # every retention.interval_s: delivered series by age and watermark
            self.retention.run_if_due()
        self._update_idle(now)
        self._beat_if_due(now)

    def _rescan_if_due(self, now: float) -> None:
        """The safety net for lost events: every ``rescan_interval_s`` (not with ``once``), scan the roots again."""
        interval = self.config.rescan_interval_s
        if not self.once and interval and now - self._last_rescan >= interval:
            self._last_rescan = now
            for root in self.config.roots:
                self.tracker.scan(root)

    def _beat_if_due(self, now: float) -> None:
        if now - self._last_beat >= HEARTBEAT_INTERVAL_S or self.beat_now.is_set():
            self._last_beat = now
            self.beat_now.clear()
            self.beat()

    # --------------------------------------------------------------------------------------------- queues

    def _drain_node_events(self) -> None:
        from edgeseg.runtime.node.receive import AssociationEnded, Stored

        for _ in range(100_000):
            try:
                event = self.node_events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, Stored):
                self.tracker.received(event.path, event.association)
            elif isinstance(event, AssociationEnded):
                self.tracker.association_ended(event.association, event.folders)

    def _drain_events(self) -> None:
        for _ in range(100_000):
            try:
                path = self.events.get_nowait()
            except queue.Empty:
                return
            self.tracker.touch(path)

    def _drain_finished(self) -> None:
        while True:
            try:
                job, outcome = self.finished.get_nowait()
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
            row = self.store.get(key)
        except Exception as err:  # noqa: BLE001 - a store error must not lose the finished series' retry
            log.error("attempts of series unknown (job store error), assuming 1: key=%s error=%s: %s", key,
                      type(err).__name__, err)
            return 1
        return row.attempts if row else 0

    # ------------------------------------------------------------------------------------------- dispatch

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
        if job.key in self._inflight:
            log.info("series changed while being segmented, it will run again after: key=%s", job.key)
            self._rerun[job.key] = job
            return
        self._retries.pop(job.key, None)
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
        self.jobs.put(job)

    def _dispatch_due_retries(self, now: float) -> None:
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

    # ----------------------------------------------------------------------------------------------- idle

    def _update_idle(self, now: float) -> None:
        idle = (self._scanned.is_set() and self.events.empty() and self.finished.empty() and self.jobs.empty()
                and self.node_events.empty() and not self._inflight and not self._retries and not self._rerun
                and not self._requeued and self.tracker.idle()
                and (self.delivery is None or not self.delivery.busy))
        if not idle:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
