"""Issue 9 (hardening), found by benchmarks/abuse_suite.py: the polling observer followed symbolic links.

watchdog's polling snapshot uses ``os.stat`` unless told otherwise, so ``observer: polling`` descended into linked
folders: ``loop -> .`` made every poll walk the tree 40 times over (until ELOOP), two such links in one folder made
the first snapshot, taken when the watcher starts, walk 2**40 paths (the watcher never started), and a link to a
folder outside the roots had that folder listed at every poll. The native observer never followed links.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from edgeseg.runtime.watch.observer import make_observer


class _Recorder(FileSystemEventHandler):
    def __init__(self) -> None:
        self.paths: list[str] = []

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.paths.append(os.fsdecode(event.src_path))


def _started(root: Path, recorder: _Recorder, timeout: float = 10.0):
    """Start a polling observer on ``root`` in a helper thread (watchdog takes the first snapshot in the thread that
    calls start()); None if that did not return within ``timeout``."""
    observer = make_observer("polling", 0.1)
    observer.schedule(recorder, str(root), recursive=True)
    starter = threading.Thread(target=observer.start, daemon=True)
    starter.start()
    starter.join(timeout)
    return None if starter.is_alive() else observer


def _wait(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_polling_snapshots_do_not_descend_into_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "exam").mkdir(parents=True)
    outside.mkdir()
    os.symlink(".", root / "loop")
    os.symlink(outside, root / "out")
    recorder = _Recorder()
    observer = _started(root, recorder)
    assert observer is not None
    try:
        (root / "exam" / "slice1").write_bytes(b"x")
        (outside / "secret").write_bytes(b"y")
        assert _wait(lambda: str(root / "exam" / "slice1") in recorder.paths)
        time.sleep(0.5)  # several more polls
    finally:
        observer.stop()
        observer.join(5)
    through_links = [p for p in recorder.paths if {"loop", "out"} & set(Path(p).relative_to(root).parts[:-1])]
    assert through_links == []


def test_two_loop_links_do_not_hang_the_start(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "exam").mkdir(parents=True)
    os.symlink(".", root / "exam" / "a")
    os.symlink(".", root / "exam" / "b")
    recorder = _Recorder()
    t0 = time.monotonic()
    observer = _started(root, recorder)
    assert observer is not None, "the first polling snapshot did not finish within 10 s"
    try:
        assert time.monotonic() - t0 < 5
        (root / "exam" / "slice1").write_bytes(b"x")
        assert _wait(lambda: str(root / "exam" / "slice1") in recorder.paths)
    finally:
        observer.stop()
        observer.join(5)


def test_a_root_that_is_a_link_is_still_polled(tmp_path: Path) -> None:
    real = tmp_path / "share"
    real.mkdir()
    root = tmp_path / "root_link"
    os.symlink(real, root)
    recorder = _Recorder()
    observer = _started(root, recorder)
    assert observer is not None
    try:
        (real / "exam").mkdir()
        (real / "exam" / "slice1").write_bytes(b"x")
        assert _wait(lambda: str(root / "exam" / "slice1") in recorder.paths)
    finally:
        observer.stop()
        observer.join(5)
