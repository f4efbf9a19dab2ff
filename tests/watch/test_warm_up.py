"""The watcher's warm-up (``warm_up``): its workers ask the segmenter to warm up before their first series, with the
state folder and the watcher's stop event, and go on whatever it raises; ``warm_up: false`` and ``--once`` skip it
(edgeseg.runtime.warmup does the work, tests/runtime/test_warmup.py)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from watch_helpers import CountingSegmenter, results, wait_for, write_series


class WarmingSegmenter(CountingSegmenter):
    """Records the warm-up calls (where, with which stop event, after how many series)."""

    def __init__(self) -> None:
        super().__init__()
        self.warm_ups: list[tuple[Path, threading.Event | None, int]] = []

    def warm_up(self, folder: Path, cancel: threading.Event | None = None, force: bool = False) -> list[Any]:
        self.warm_ups.append((folder, cancel, sum(self.calls.values())))
        return []


def test_the_worker_warms_up_before_its_first_series(start_watcher, make_config, roots) -> None:
    segmenter = WarmingSegmenter()
    w = start_watcher(segment=segmenter, max_concurrent_series=2)
    # each worker asks (the real segmenter runs it once: tests/runtime/test_warmup.py), before any series
    assert wait_for(lambda: len(segmenter.warm_ups) == 2, timeout=10)
    write_series(roots / "exam" / "s1", 3, description="t1")
    assert wait_for(lambda: len(results(roots)) == 1, timeout=30)
    for folder, cancel, series_before in segmenter.warm_ups:
        assert folder == make_config().state_dir and cancel is w._stop and series_before == 0


class FailingWarmUp(WarmingSegmenter):
    def warm_up(self, folder: Path, cancel: threading.Event | None = None, force: bool = False) -> list[Any]:
        super().warm_up(folder, cancel, force)
        raise RuntimeError("not what a warm-up should raise")


def test_a_warm_up_that_raises_does_not_stop_the_worker(start_watcher, roots) -> None:
    segmenter = FailingWarmUp()
    w = start_watcher(segment=segmenter)
    write_series(roots / "exam" / "s1", 3, description="t1")
    assert wait_for(lambda: len(results(roots)) == 1, timeout=30)
    assert len(segmenter.warm_ups) == 1 and w.alive()


@pytest.mark.parametrize("how", ["warm_up: false", "--once"])
def test_no_warm_up(how: str, start_watcher, roots) -> None:
    segmenter = WarmingSegmenter()
    write_series(roots / "exam" / "s1", 3, description="t1")
    if how == "--once":
        w = start_watcher(segment=segmenter, once=True)
        assert w.wait_idle(30)
    else:
        start_watcher(segment=segmenter, warm_up=False)
    assert wait_for(lambda: len(results(roots)) == 1, timeout=30)
    assert segmenter.warm_ups == []
