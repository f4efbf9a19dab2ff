"""edgeseg.runtime.watch: the hands-free watcher beside the scanner.

One module per role:

* :mod:`~edgeseg.runtime.watch.config`: ``watch_config.yaml`` -> frozen :class:`WatchConfig` (CLI > env > file).
* :mod:`~edgeseg.runtime.watch.observer`: watchdog observer (native or polling), an enqueue-only handler, the
  input path filter.
* :mod:`~edgeseg.runtime.watch.completion`: when a series has finished arriving (quiet period, expected count).
* :mod:`~edgeseg.runtime.watch.store`: the SQLite job store that survives crashes.
* :mod:`~edgeseg.runtime.watch.service`: the :class:`Watcher`'s lifecycle (start, stop, run, signals); it builds
  and runs the parts below.
* :mod:`~edgeseg.runtime.watch.scheduler`: the scheduler thread (event queues, dispatch, retries, idle).
* :mod:`~edgeseg.runtime.watch.worker`: the worker threads (one series: limits, plan against the time budget with
  the segmenter's planner, segment, record the outcome).
* :mod:`~edgeseg.runtime.watch.heartbeat`: ``watcher.json`` for ``edgeseg status`` and the state-folder check.
* :mod:`~edgeseg.runtime.watch.deliver`: the delivery thread that sends the job store's outbox.
* :mod:`~edgeseg.runtime.watch.commands`: ``edgeseg watch | status | deliver``; ``doctor`` is
  :mod:`~edgeseg.runtime.watch.doctor`, what they share :mod:`~edgeseg.runtime.watch.state_view` (``edgeseg demo``
  is :mod:`edgeseg.runtime.demo`, on top of the watcher and the DICOM node).
* :mod:`~edgeseg.runtime.watch.jobs`: the job record (the reader's :class:`~edgeseg.runtime.read.SeriesRef` plus
  the watcher's bookkeeping).

Importing this package is light: heavy modules load on first attribute access.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WatchConfig": "config", "load_config": "config",
    "Watcher": "service",
    "CompletionTracker": "completion",
    "JobStore": "store",
    "SeriesJob": "jobs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
