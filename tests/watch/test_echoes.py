"""Several 3-D stacks in one series in the watcher (issue 11, item 5): a completed multi-echo series is handed out as
one job per stack, split by the read stage's own rule (``split_series``, as ``discover_series``); each stack is a
series of its own in the job store, so exactly-once holds per stack; ``echoes: first`` segments the first only."""
from __future__ import annotations

import os
import time

import pytest
from watch_helpers import QUIET, results, wait_for

from edgeseg.runtime.read import discover_series
from edgeseg.runtime.watch.completion import CompletionTracker
from edgeseg.runtime.watch.observer import PathFilter
from edgeseg.runtime.watch.store import DISCOVERED, DONE


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _complete(tracker: CompletionTracker, clock: Clock, seconds: float) -> list:
    jobs = []
    end = clock.t + seconds
    while clock.t < end:
        jobs.extend(tracker.poll().complete)
        clock.t += 0.5
    return jobs


@pytest.mark.parametrize("echoes", ["all", "first"])
def test_the_tracker_hands_out_the_stacks_discovery_finds(tmp_path, echoes) -> None:
    from helpers.dicom_cases import multi_echo_series

    root = tmp_path / "in"
    multi_echo_series(root / "exam", 5)
    clock = Clock()
    tracker = CompletionTracker(10.0, PathFilter([root]), settle_s=1.0, clock=clock, echoes=echoes)
    tracker.scan(root)
    jobs = _complete(tracker, clock, 14.0)
    refs = discover_series(root, echoes=echoes)
    assert [(j.key, j.name, j.image_files) for j in jobs] == [(r.key, r.name, r.files) for r in refs]
    assert [j.ref.stack.label for j in jobs] == (["echo1", "echo2"] if echoes == "all" else ["echo1"])
    assert all(j.files == j.image_files and j.problem is None for j in jobs)
    assert len({j.fingerprint for j in jobs}) == len(jobs)  # each stack fingerprints its own files
    assert _complete(tracker, clock, 14.0) == [] and tracker.idle()


def test_each_echo_is_segmented_once_and_a_changed_echo_alone_again(start_watcher, segmenter, roots,
                                                                    tmp_path) -> None:
    from helpers.dicom_cases import multi_echo_series

    w = start_watcher()
    files, _ = multi_echo_series(roots / "exam", 5)
    assert wait_for(lambda: len(results(roots)) == 2)
    assert w.wait_idle(10)
    assert sorted(k.rsplit("#", 1)[1] for k in segmenter.calls) == ["echo1", "echo2"]
    assert set(segmenter.calls.values()) == {1}
    rows = w.store.rows()
    assert sorted(r.state for r in rows) == [DONE, DONE] and DISCOVERED not in {r.state for r in rows}
    assert sorted(r.name.rsplit("_", 1)[1] for r in rows) == ["echo1", "echo2"]

    later = time.time() + 5
    os.utime(files[-1], (later, later))  # a file of echo 2 is sent again
    w.tracker.touch(files[-1])
    assert wait_for(lambda: sum(segmenter.calls.values()) == 3)
    assert w.wait_idle(10)
    time.sleep(2 * QUIET)
    calls = {k.rsplit("#", 1)[1]: n for k, n in segmenter.calls.items()}
    assert calls == {"echo1": 1, "echo2": 2}  # echo 1's input did not change: not repeated


def test_a_restart_neither_repeats_the_stacks_nor_lists_their_series_as_discovered(start_watcher, segmenter,
                                                                                     roots) -> None:
    from helpers.dicom_cases import multi_echo_series

    w = start_watcher()
    multi_echo_series(roots / "exam", 4)
    assert wait_for(lambda: len(results(roots)) == 2)
    assert w.wait_idle(10)
    w.stop()
    w2 = start_watcher()  # the same state folder: the series is found again, as one series first
    assert w2.wait_idle(10)
    time.sleep(2 * QUIET)
    assert sum(segmenter.calls.values()) == 2
    assert sorted(r.state for r in w2.store.rows()) == [DONE, DONE]


def test_echoes_first_in_the_config(start_watcher, segmenter, roots, tmp_path) -> None:
    from helpers.dicom_cases import multi_echo_series

    w = start_watcher(echoes="first")
    multi_echo_series(roots / "exam", 5)
    assert wait_for(lambda: len(results(roots)) == 1)
    assert w.wait_idle(10)
    time.sleep(2 * QUIET)
    (key,) = segmenter.calls
    assert key.endswith("#echo1") and results(roots)[0].name.endswith("_echo1.edgeseg")
    assert [r.state for r in w.store.rows()] == [DONE]


def test_the_echoes_key_is_validated(tmp_path) -> None:
    from edgeseg.errors import ConfigError
    from edgeseg.runtime.watch.config import load_config

    (tmp_path / "in").mkdir()
    config = tmp_path / "watch_config.yaml"
    config.write_text("roots: [in]\nbundle: demo\nechoes: second\n")
    with pytest.raises(ConfigError, match="echoes: must be one of all, first, magnitude, got 'second'"):
        load_config(config, env={}, check_paths=False)
    config.write_text("roots: [in]\nbundle: demo\n")
    assert load_config(config, env={}, check_paths=False).echoes == "all"
    assert load_config(config, env={"EDGESEG_ECHOES": "first"}, check_paths=False).echoes == "first"
