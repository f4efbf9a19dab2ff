"""The retention policy: what the watcher removes, and when (settings ``retention.*``).

A console-side PC runs for months: the images the DICOM listener received (patient data) and the results must not
stay forever, nor fill the disk until the listener refuses the console (0xA700). What may be removed is decided
from the job store only:

* a series is *delivered* when its row is ``done`` and every delivery of its result was confirmed (``sent``); with
  no delivery rows (no destinations, or nothing to send), when its result was written. Its time of delivery is the
  last confirmation (else the result's ``finished_at``).
* **by age**: ``results_days`` after delivery its result folder (``<name>.edgeseg/``, edgeseg's own) goes;
  ``received_days`` after delivery the images the listener received for it (``dicom_listener.root``). The images
  of the watched export folders belong to the console: removed only with ``export_folders: true``.
* **by watermark**: while a root's disk has less than ``min_free_mb`` free, delivered series are removed
  oldest-delivered first (result, and images as above), whatever their age; when nothing removable is left, a
  warning says so (an admin must act).
* a series the selection rules skipped (the store's ``skipped`` table) counts as delivered when it was skipped: its
  received images go by the same rules (not its export-folder images unless ``export_folders``).
* never: a result not delivered (pending or failed deliveries), a series that is not ``done`` (complete, running,
  failed, partial), files the job store knows nothing about, anything outside the series' own folder. A series
  held as several stacks (echoes) loses its images only when every stack is delivered.

Each removal is recorded in the job store (:meth:`~edgeseg.runtime.watch.store.JobStore.record_removal`: the
SeriesInstanceUID, what, why, counts and times; no names or paths) and logged with the UID only. A removed result
is not segmented again while the series' input is unchanged.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

from edgeseg.runtime.naming import is_edgeseg_output
from edgeseg.runtime.read import DICOM, PARREC, rec_files
from edgeseg.runtime.settings.schema import default
from edgeseg.runtime.watch.store import DONE, SENT, JobRow, JobStore

log = logging.getLogger(__name__)

DAY_S = 86400.0
#: what a removal removed, and why
RESULT, INPUT = "result", "input"
AGE, WATERMARK = "age", "watermark"


@dataclass(frozen=True)
class RetentionPolicy:
    """The validated ``retention.*`` settings (days and MB; None: that rule is off)."""

    received_days: float | None = default("retention.received_days")
    results_days: float | None = default("retention.results_days")
    min_free_mb: float | None = default("retention.min_free_mb")
    export_folders: bool = default("retention.export_folders")
    interval_s: float = default("retention.interval_s")

    def describe(self) -> str:
        def days(v: float | None) -> str:
            return "kept" if v is None else f"{v:g} days after delivery"
        return (f"received images: {days(self.received_days)}; results: {days(self.results_days)}; watermark: "
                + ("none" if self.min_free_mb is None else f"{self.min_free_mb:g} MB free, oldest delivered first")
                + "; export folders' images: " + ("removed as received images" if self.export_folders else "kept"))


@dataclass(frozen=True)
class Removal:
    """One removal: the series (job key and SeriesInstanceUID), ``what`` (result / input), ``reason`` (age /
    watermark), how many files and bytes."""

    key: str
    series_uid: str | None
    what: str
    reason: str
    files: int
    bytes: int


class _Held(Protocol):
    """What the policy reads of a series the store holds: a job row (:class:`JobRow`) or a skipped one
    (:class:`~edgeseg.runtime.watch.store.SkippedRow`)."""

    @property
    def key(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def series_uid(self) -> str | None: ...

    @property
    def folder_path(self) -> Path: ...

    @property
    def output_dir(self) -> Path | None: ...

    @property
    def result_removed_at(self) -> float | None: ...

    @property
    def input_removed_at(self) -> float | None: ...


@dataclass
class _Group:
    """The rows of one series (its stacks share the folder and the UID): what may be removed of it."""

    rows: Sequence[_Held]
    delivered_at: float
    received: bool
    #: every row of the series is done and delivered (its images may go)
    all_delivered: bool = True
    removed: set[tuple[str, str]] = field(default_factory=set)

    @property
    def folder(self) -> Path:
        return self.rows[0].folder_path


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _inside(path: Path, root: Path | None) -> bool:
    if root is None:
        return False
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
        return True
    except ValueError:
        return False


def _tree_size(path: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
            except OSError:
                pass
    return files, size


class Retention:
    """Applies a :class:`RetentionPolicy` to the job store's delivered series (module docstring).

    ``roots``: the watched roots (the watermark is checked on their disks); ``received_root``: the DICOM listener's
    root (None: no listener); ``free_bytes``: free bytes on the disk of a path; ``wall``: epoch seconds."""

    def __init__(self, store: JobStore, policy: RetentionPolicy, roots: Iterable[Path],
                 received_root: Path | None = None, free_bytes: Callable[[Path], int] = _free_bytes,
                 wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.policy = policy
        self.roots = tuple(Path(r) for r in roots)
        self.received_root = Path(received_root) if received_root is not None else None
        self.free_bytes = free_bytes
        self.wall = wall
        self._last = 0.0

    # ----------------------------------------------------------------------------------------------- running

    def run_if_due(self) -> list[Removal]:
        """:meth:`run` when ``interval_s`` passed since the last run (the scheduler calls it at every poll)."""
        now = self.wall()
        if now - self._last < self.policy.interval_s:
            return []
        self._last = now
        try:
            return self.run()
        except Exception:  # noqa: BLE001 - a failed clean-up never stops the watcher; it runs again later
            log.exception("retention run failed; it runs again in %.0f s", self.policy.interval_s)
            return []

    def run(self) -> list[Removal]:
        """One pass: removals by age, then by watermark; returns what was removed."""
        now = self.wall()
        groups = self._groups()
        done: list[Removal] = []
        p = self.policy
        for group in groups:
            age = now - group.delivered_at
            if p.results_days is not None and age > p.results_days * DAY_S:
                done += self._remove_results(group, AGE)
            if p.received_days is not None and age > p.received_days * DAY_S:
                done += self._remove_input(group, AGE)
        if p.min_free_mb is not None:
            done += self._watermark(groups, p.min_free_mb * 1e6)
        return done

    def _watermark(self, groups: list[_Group], need: float) -> list[Removal]:
        done: list[Removal] = []
        for group in sorted(groups, key=lambda g: g.delivered_at):  # oldest delivered first
            if self.free_bytes(group.folder) >= need:
                continue
            done += self._remove_results(group, WATERMARK)
            done += self._remove_input(group, WATERMARK)
        for root in self.roots:
            try:
                free = self.free_bytes(root)
            except OSError:
                continue
            if free < need:
                log.warning("retention: %s has %.0f MB free, below retention.min_free_mb %.0f, and no delivered "
                            "series is left to remove. Fix: free space on that disk, check the deliveries "
                            "(`edgeseg status`), or lower retention.min_free_mb", root, free / 1e6, need / 1e6)
        return done

    # ------------------------------------------------------------------------------------------------ what

    def _groups(self) -> list[_Group]:
        """The delivered series, one group per (folder, series) with the time of its last delivery."""
        rows = self.store.rows()
        by_series: dict[tuple[str, str], list[JobRow]] = {}
        for row in rows:
            series = row.series_uid or row.key
            by_series.setdefault((row.folder, series), []).append(row)
        groups: list[_Group] = []
        for members in by_series.values():
            delivered: list[tuple[JobRow, float]] = []
            for row in members:
                at = self._delivered_at(row)
                if at is not None:
                    delivered.append((row, at))
            if not delivered:
                continue
            received = _inside(members[0].folder_path, self.received_root)
            groups.append(_Group([r for r, _ in delivered], max(at for _, at in delivered), received,
                                 all_delivered=len(delivered) == len(members)))
        # series the selection rules skipped: their images count as delivered when they were skipped (a job row of
        # the same series, e.g. its magnitude stack, keeps them until that one is delivered too)
        held = {(row.folder, row.series_uid or row.key) for row in rows}
        for skipped in self.store.skipped():
            if (skipped.folder, skipped.series_uid or skipped.key) in held:
                continue
            groups.append(_Group([skipped], skipped.last_at, _inside(skipped.folder_path, self.received_root)))
        return groups

    def _delivered_at(self, row: JobRow) -> float | None:
        """When ``row``'s result was delivered; None: not done, or a delivery not (yet) confirmed."""
        if row.state != DONE:
            return None
        deliveries = self.store.deliveries_of(row.key)
        if any(d.state != SENT for d in deliveries):
            return None
        sent = [d.sent_at for d in deliveries if d.sent_at is not None]
        return max(sent) if sent else row.finished_at

    # ---------------------------------------------------------------------------------------------- removing

    def _remove_results(self, group: _Group, reason: str) -> list[Removal]:
        out = []
        for row in group.rows:
            result = row.output_dir
            if row.result_removed_at is not None or (row.key, RESULT) in group.removed or result is None:
                continue
            # only edgeseg's own result folder, directly in the series' folder
            if not is_edgeseg_output(result.name) or result.parent != row.folder_path or not result.is_dir() \
                    or result.is_symlink():
                continue
            files, size = _tree_size(result)
            shutil.rmtree(result)
            group.removed.add((row.key, RESULT))
            out.append(self._record(row, RESULT, reason, files, size, group.delivered_at))
        return out

    def _remove_input(self, group: _Group, reason: str) -> list[Removal]:
        if not group.all_delivered or not (group.received or self.policy.export_folders):
            return []
        row = group.rows[0]
        if row.input_removed_at is not None or (row.key, INPUT) in group.removed:
            return []
        paths = self._input_files(row)
        if not paths:
            return []
        size = 0
        for path in paths:
            try:
                size += path.lstat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
        group.removed.add((row.key, INPUT))
        if group.received:
            self._prune(row.folder_path)
        out = [self._record(row, INPUT, reason, len(paths), size, group.delivered_at)]
        for other in group.rows[1:]:  # the other stacks of the series: their images went with it
            group.removed.add((other.key, INPUT))
        return out

    def _input_files(self, row: _Held) -> list[Path]:
        """The series' own input files: for DICOM the files directly in its folder whose header has its
        SeriesInstanceUID (a series without one is never removed); for NIfTI the file, for PAR/REC the pair."""
        folder = row.folder_path
        if row.kind == DICOM:
            if not row.series_uid or not folder.is_dir():
                return []
            import pydicom

            out = []
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.name.startswith(".") or is_edgeseg_output(entry.name) or not entry.is_file(
                        follow_symlinks=False):
                    continue
                try:
                    ds = pydicom.dcmread(entry.path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                except Exception:  # noqa: BLE001 - not a DICOM file of this series: not ours to remove
                    continue
                if str(ds.get("SeriesInstanceUID", "")) == row.series_uid:
                    out.append(Path(entry.path))
            return out
        path = Path(row.key)
        if not path.is_file() or path.is_symlink():
            return []
        return [path, *rec_files(path)] if row.kind == PARREC else [path]

    def _prune(self, folder: Path) -> None:
        """Remove the received series' folder and its study folder when empty (never the listener's root)."""
        for candidate in (folder, folder.parent):
            if self.received_root is None or Path(os.path.abspath(candidate)) == Path(os.path.abspath(
                    self.received_root)) or not _inside(candidate, self.received_root):
                return
            try:
                candidate.rmdir()
            except OSError:
                return

    def _record(self, row: _Held, what: str, reason: str, files: int, size: int, delivered_at: float) -> Removal:
        self.store.record_removal(row.key, row.series_uid, what, reason, files, size, delivered_at)
        log.info("retention: removed %s of series uid=%s reason=%s files=%d bytes=%d", what,
                 row.series_uid or "(none)", reason, files, size)
        return Removal(row.key, row.series_uid, what, reason, files, size)

    # ---------------------------------------------------------------------------------------------- forecast

    def forecast(self, days: float = 7.0) -> list[str]:
        """For ``edgeseg doctor``: per root, the free space, what the images of the last ``days`` days took per day
        (received and exported series the store knows), how much delivered data the policy may remove now, and in
        how many days the disk reaches the watermark at that rate."""
        now = self.wall()
        recent = sum(_tree_size(Path(r.folder_path))[1] for r in self.store.rows()
                     if r.completed_at is not None and now - r.completed_at < days * DAY_S
                     and r.folder_path.is_dir() and r.kind == DICOM) / days
        groups = self._groups()
        lines = []
        for root in self.roots:
            try:
                free = self.free_bytes(root)
            except OSError as err:
                lines.append(f"{root}: free space unknown ({err})")
                continue
            releasable = sum(_tree_size(r.output_dir)[1] for g in groups for r in g.rows
                             if _inside(g.folder, root) and r.output_dir is not None and r.output_dir.is_dir())
            floor = (self.policy.min_free_mb or 0.0) * 1e6
            text = (f"{root}: {free / 1e6:,.0f} MB free; about {recent / 1e6:,.1f} MB/day arrived over the last "
                    f"{days:g} days; {releasable / 1e6:,.1f} MB of delivered results removable")
            if recent > 0:
                text += f"; the watermark is reached in about {max(0.0, (free - floor) / recent):,.0f} days"
            lines.append(text)
        return lines
