"""Fixtures for the watcher tests: small DICOM series written like a console would, a config factory, a
counting fake segmenter, and a watcher that is always stopped and checked for leaked threads."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from watch_helpers import QUIET, CountingSegmenter, wait_for

from edgeseg.runtime.watch.config import WatchConfig, load_config
from edgeseg.runtime.watch.service import Watcher



@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "incoming"
    root.mkdir()
    return root


@pytest.fixture
def make_config(tmp_path: Path, roots: Path) -> Callable[..., WatchConfig]:
    """``make_config(**overrides)``: a valid config for ``roots`` with a short quiet period; environment ignored."""
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)

    def make(**overrides: Any) -> WatchConfig:
        values: dict[str, Any] = {
            "roots": [str(roots)], "bundle": str(bundle), "quiet_period_s": QUIET,
            "state_dir": str(tmp_path / "state"), "log_dir": str(tmp_path / "logs"), "stop_grace_s": 5.0,
            "time_budget_s": None, "rescan_interval_s": 0.0,
        }
        values.update(overrides)
        return load_config(None, values, env={})
    return make


@pytest.fixture
def segmenter() -> CountingSegmenter:
    return CountingSegmenter()


@pytest.fixture
def start_watcher(make_config: Callable[..., WatchConfig], segmenter: CountingSegmenter
                  ) -> Iterator[Callable[..., Watcher]]:
    """``start_watcher(**config_overrides)``: a started in-process watcher with the counting fake segmenter;
    stopped at teardown, and the test fails if any thread it started is still alive."""
    before = set(threading.enumerate())
    started: list[Watcher] = []

    def start(segment: Any = None, once: bool = False, **overrides: Any) -> Watcher:
        w = Watcher(make_config(**overrides), segment or segmenter, once=once, settle_s=0.1)
        w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
    assert wait_for(lambda: not (set(threading.enumerate()) - before), timeout=5), \
        f"threads leaked: {[t.name for t in set(threading.enumerate()) - before]}"


@pytest.fixture(autouse=True)
def _no_edgeseg_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The EDGESEG_* settings of the developer's shell must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("EDGESEG_"):
            monkeypatch.delenv(name)
