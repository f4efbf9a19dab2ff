"""File-system observation: which paths are input, and a watchdog handler that only enqueues them.

As in watchdog's own design the observer (emitter threads) and the handler are split, and the handler does no
work: no stat, no header read, no lock held by anyone else. It filters cheaply by name and puts the path on a
queue that the scheduler thread drains (:mod:`edgeseg.runtime.watch.service`). ``native`` uses the platform
observer; ``polling`` uses :class:`watchdog.observers.polling.PollingObserver`, which is the one that sees files
written to a network share by another machine.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import queue
from pathlib import Path
from typing import Any, Iterable

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from edgeseg.runtime.naming import is_edgeseg_output
from edgeseg.runtime.watch.config import ObserverKind

log = logging.getLogger(__name__)


class PathFilter:
    """Which files and folders below the watch roots are input.

    Never input: anything below a folder or file whose name starts with "." (temporary and hidden files, our
    ``.<name>.edgeseg.partial-*`` folders), edgeseg outputs (``*.edgeseg/``, ``*.edgeseg-error.json``), the
    ``ignore`` folders (state and log folders placed inside a root), and paths outside the roots. Otherwise a file
    is input when its name (or, for a pattern with "/", its path relative to the root) matches an ``include``
    pattern and no ``exclude`` pattern. Matching is case-insensitive (scanner exports mix cases).
    """

    def __init__(self, roots: Iterable[Path], include: Iterable[str] = ("*",), exclude: Iterable[str] = (),
                 ignore: Iterable[Path] = ()) -> None:
        self.roots = tuple(Path(os.path.abspath(r)) for r in roots)
        self.include = tuple(p.lower() for p in include)
        self.exclude = tuple(p.lower() for p in exclude)
        self.ignore = tuple(Path(os.path.abspath(p)) for p in ignore)

    def _relative(self, path: Path) -> tuple[Path, tuple[str, ...]] | None:
        for root in self.roots:
            try:
                rel = path.relative_to(root)
            except ValueError:
                continue
            return root, rel.parts
        return None

    def _blocked(self, path: Path) -> bool:
        found = self._relative(path)
        if found is None:
            return True
        _, parts = found
        if any(p.startswith(".") for p in parts):
            return True
        if any(path == ig or ig in path.parents for ig in self.ignore):
            return True
        return bool(parts) and is_edgeseg_output(Path(*parts))  # only below the root: the root's own name is free

    def folder(self, path: Path) -> bool:
        """May files below this folder be input?"""
        return not self._blocked(Path(path))

    def file(self, path: Path) -> bool:
        """Is this file input?"""
        path = Path(path)
        if self._blocked(path):
            return False
        found = self._relative(path)
        assert found is not None
        rel = "/".join(found[1]).lower()
        name = path.name.lower()

        def match(pattern: str) -> bool:
            return fnmatch.fnmatchcase(rel if "/" in pattern else name, pattern)

        return any(match(p) for p in self.include) and not any(match(p) for p in self.exclude)


class EnqueueHandler(FileSystemEventHandler):
    """A watchdog event handler that only enqueues paths that may matter (file events that pass the filter;
    folder creations, moves and deletions, which the scheduler scans or forgets)."""

    def __init__(self, path_filter: PathFilter, sink: queue.SimpleQueue[Path]) -> None:
        super().__init__()
        self.filter = path_filter
        self.sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        """Called by watchdog's observer thread for every event."""
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        paths = [event.src_path]
        if kind == "moved" and getattr(event, "dest_path", None):
            paths.append(event.dest_path)
        for raw in paths:
            path = Path(os.fsdecode(raw))
            if event.is_directory:
                if kind in ("created", "moved", "deleted") and self.filter.folder(path):
                    self.sink.put(path)
            elif kind in ("deleted", "moved") or self.filter.file(path):
                # a deletion or a move away must reach the tracker even for a name we would not take as input
                if self.filter.folder(path.parent):
                    self.sink.put(path)


def make_observer(kind: ObserverKind | str, polling_interval_s: float) -> Any:
    """A not yet started watchdog observer of the requested kind."""
    kind = ObserverKind(kind)
    if kind is ObserverKind.POLLING:
        from watchdog.observers.polling import PollingObserverVFS

        # lstat, not watchdog's default os.stat: a snapshot must not descend into linked folders. With os.stat one
        # `ln -s . loop` made every poll walk the tree 40 times over (until ELOOP), two such links in one folder
        # made the first snapshot (taken at start) walk 2**40 paths, and a link to a folder outside the roots had
        # that folder listed at every poll. A link is now one entry of the snapshot, like a file (the scheduler
        # ignores it, as with native events); a root that is itself a link is still listed through it.
        return PollingObserverVFS(stat=os.lstat, listdir=os.scandir, polling_interval=polling_interval_s)
    from watchdog.observers import Observer

    return Observer()


def start_observer(kind: ObserverKind | str, polling_interval_s: float, roots: Iterable[Path],
                   handler: EnqueueHandler) -> Any:
    """Schedule ``handler`` recursively on every root and start the observer (its threads are daemons)."""
    observer = make_observer(kind, polling_interval_s)
    for root in roots:
        observer.schedule(handler, str(root), recursive=True)
    observer.start()  # watchdog's threads are daemons
    log.info("observing: kind=%s roots=%s", ObserverKind(kind).value, ", ".join(str(r) for r in roots))
    return observer
