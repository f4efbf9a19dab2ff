"""The watcher's warm-up (``warm_up``): its workers ask the segmenter to warm up before their first series, with the
state folder and the watcher's stop event; ``warm_up: false`` skips it (edgeseg.runtime.warmup does the work,
tests/runtime/test_warmup.py)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from watch_helpers import CountingSegmenter, results, wait_for, write_series


class WarmingSegmenter(CountingSegmenter):
    """Records the warm-up calls (where, with which stop event, after how many series)."""

    def __init__(self) -> None:
        super().__init__()
        self.warm_ups: list[tuple[Path, threading.Event | None, int]] = []

    def warm_up(self, folder: Path, cancel: threading.Event | None = None, force: bool = False) -> list[Any]:
        self.warm_ups.append((folder, cancel, sum(self.calls.values())))
        return []


def test_the_worker_warms_up_before_its_first_series(start_watcher, make_config, roots, tmp_path) -> None:
    segmenter = WarmingSegmenter()
    w = start_watcher(segment=segmenter, max_concurrent_series=2)
    write_series(roots / "exam" / "s1", 3, description="t1")
    assert wait_for(lambda: len(results(roots)) == 1, timeout=30)
    assert len(segmenter.warm_ups) == 2  # each worker asks; the segmenter runs it once (runtime/warmup.py's lock)
    for folder, cancel, series_before in segmenter.warm_ups:
        assert folder == make_config().state_dir and cancel is w._stop and series_before == 0


def test_warm_up_false_skips_it(start_watcher, roots) -> None:
    segmenter = WarmingSegmenter()
    start_watcher(segment=segmenter, warm_up=False)
    write_series(roots / "exam" / "s1", 3, description="t1")
    assert wait_for(lambda: len(results(roots)) == 1, timeout=30)
    assert segmenter.warm_ups == []
