"""The watcher's heartbeat (``<state_dir>/watcher.json``, read by ``edgeseg status``) and the series running now.

Before each live beat the :class:`Heartbeat` checks that the state folder and the job store are still the ones the
watcher opened at start; if one was deleted or replaced it records :attr:`Heartbeat.fatal` and sets the stop event,
and the watcher raises that error when it has stopped.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from edgeseg.errors import StateStoreError
from edgeseg.runtime.watch.completion import CompletionTracker
from edgeseg.runtime.watch.config import WatchConfig
from edgeseg.runtime.write.atomic import write_json_atomic

log = logging.getLogger(__name__)


def identity(path: Path) -> tuple[int, int]:
    """(device, inode) of a file or folder: a folder deleted and created again has another identity."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def state_identities(config: WatchConfig) -> dict[Path, tuple[int, int]]:
    """The identities of the state folder and the job store, taken right after the store is opened."""
    return {p: identity(p) for p in (config.state_dir, config.store_path)}


class Running:
    """The series being segmented now (key -> wall-clock start), shared by the workers, the heartbeat and stop.
    :attr:`changed` is set at each change: the scheduler then writes a heartbeat at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}
        self._progress: dict[str, tuple[str, float]] = {}
        self.changed = threading.Event()

    def add(self, key: str) -> None:
        with self._lock:
            self._since[key] = time.time()
            self._progress[key] = ("starting", 0.0)
        self.changed.set()

    def discard(self, key: str) -> None:
        with self._lock:
            self._since.pop(key, None)
            self._progress.pop(key, None)
        self.changed.set()

    def progress(self, key: str, stage: str, fraction: float) -> None:
        """The segmenter's last progress report of ``key`` (stage, fraction 0..1); not a change worth a beat."""
        with self._lock:
            if key in self._since:
                self._progress[key] = (stage, fraction)

    def snapshot(self) -> list[dict[str, Any]]:
        """The running series: key, wall-clock start, last stage and fraction, sorted by key."""
        with self._lock:
            return [{"key": k, "since": self._since[k], "stage": self._progress.get(k, ("", 0.0))[0],
                     "fraction": self._progress.get(k, ("", 0.0))[1]} for k in sorted(self._since)]

    def keys(self) -> list[str]:
        """The running series' keys, sorted."""
        with self._lock:
            return sorted(self._since)


class Heartbeat:
    """Writes ``watcher.json`` (pid, liveness, the open and running series, the counts) for ``edgeseg status``.

    ``state_ids``: :func:`state_identities` at start; ``jobs``: the queue of series waiting for a worker;
    ``listener``: the DICOM listener's bound address, ``"host:port"`` (None: no listener); ``stop``: set when the
    state folder is gone (:attr:`fatal`).
    """

    def __init__(self, config: WatchConfig, state_ids: dict[Path, tuple[int, int]], stop: threading.Event, *,
                 running: Running, tracker: CompletionTracker, jobs: queue.Queue[Any], stats: Counter[str],
                 started_at: float, listener: str | None = None) -> None:
        self.config = config
        self.state_ids = state_ids
        self.stop = stop
        self.running = running
        self.tracker = tracker
        self.jobs = jobs
        self.stats = stats
        self.started_at = started_at
        self.listener = listener
        #: set when the watcher stopped itself because it cannot go on (state folder deleted)
        self.fatal: StateStoreError | None = None
        #: when the last live beat was written (epoch seconds; None before the first): /healthz's freshness
        self.last_beat_at: float | None = None
        #: the data of the last beat written (replaced whole at each beat: safe to read from other threads)
        self.last: dict[str, Any] = {}

    def state_problem(self) -> StateStoreError | None:
        """None while the state folder and the job store opened at start are still there (same identity)."""
        cfg = self.config
        for path, ident in self.state_ids.items():
            try:
                same = identity(path) == ident
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

    def write(self, stopped: bool = False) -> None:
        """One beat. Before a live beat, checks that the state folder and job store are still the ones opened at
        start; if not, stops the watcher with :attr:`fatal` set. The last beat (``stopped``) names no listener."""
        if self.fatal is not None:
            return
        if not stopped and self.state_ids:
            problem = self.state_problem()
            if problem is not None:
                self.fatal = problem
                log.error("%s", problem)
                self.stop.set()
                return
        running = self.running.keys()
        try:
            now = time.time()
            data: dict[str, Any] = {
                "pid": os.getpid(),
                "started_at": self.started_at,
                "heartbeat_at": now,
                "stopped": stopped,
                "roots": [str(r) for r in self.config.roots],
                "running": running,
                #: per running series: key, start, the segmenter's last stage and fraction
                "progress": self.running.snapshot(),
                "open_series": self.tracker.pending(),
                "queued": self.jobs.qsize(),
                "stats": dict(self.stats),
                #: the DICOM listener's bound address, "host:port" (None: no listener)
                "listener": None if stopped else self.listener,
            }
            write_json_atomic(self.config.state_dir / "watcher.json", data, indent=1)
            self.last = data
            if not stopped:
                self.last_beat_at = now
        except OSError as err:
            log.debug("heartbeat not written: %s", err)
