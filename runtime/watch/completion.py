"""Series completion: when has a series finished arriving?

Files arrive one by one (DICOM instances), several series interleaved in one folder, or as one image file
(NIfTI, PAR/REC). The tracker never reads a file that is still being written:

* Every candidate file is stat'ed at each :meth:`CompletionTracker.poll` until it has looked the same (size,
  mtime) at two looks at least ``settle_s`` apart; only then is its DICOM header read (without pixel data).
* A header that cannot be read (not DICOM, truncated, neither a SeriesInstanceUID nor image rows) is retried when
  the file changes; once it has been unchanged for the quiet period it is an *invalid file*: attached to the
  series of its folder when there are any, else reported as a job of its own (kind ``invalid``) that ends in an
  error file.
* Instances are grouped by (folder, SeriesInstanceUID), or for an export without UIDs by (folder, the identity
  derived from their headers: :func:`~edgeseg.runtime.read.headers.series_identity`, the rule discovery uses
  too). A DICOM series is complete when no instance arrived for ``quiet_period_s`` (Orthanc's StableAge,
  mercure's series_complete_trigger), no file of its folder is still settling, and, where the headers announce a
  count (ImagesInAcquisition; NumberOfTemporalPositions x slice positions; InConcatenationTotalNumber for
  enhanced multi-frame, whose frames are in one file), that count is reached. A count not reached after
  ``count_timeout_factor`` quiet periods is waived (the reader decides).
* A NIfTI or PAR/REC series is complete when its files were unchanged for the quiet period and it opens.
* An instance arriving after a series was handed out re-opens it; it is handed out again, with a new
  fingerprint, once quiet again.
* A DICOM series holding several 3-D stacks at the same positions (echoes, Dixon in/opposed phase, time points) is
  handed out as one job per stack, split by the read stage's :func:`~edgeseg.runtime.read.split_series` (the rule
  :func:`~edgeseg.runtime.read.discover_series` follows): each stack has its own key (``<folder>::<UID>#echo2``),
  name, error file, result and fingerprint (over its own files), so the job store keeps exactly-once per stack and
  a late file re-runs only the stacks whose files changed. ``echoes: first`` hands out the first stack only.

Instances written by edgeseg's own DICOM listener (:mod:`edgeseg.runtime.node.receive`) come with hints: they are
complete when they appear (written under a temporary name, fsync'ed, renamed), so they are read without settling,
and a series whose sending association *ended* (and no other association is still sending into its folder) is
complete ``hint_grace_s`` after that instead of a full quiet period, provided no instance arrived after the end and
the announced count, if any, is reached. Late instances (another association) re-open it as any others.

Files found by the first scan at start are back-dated by their mtime, so series that arrived while the watcher
was down do not wait a full quiet period; files that keep arriving still restart the clock.

What a file is, which series an instance belongs to, how many instances its headers announce, the series'
geometry and its fingerprint come from the read stage's header API (:mod:`edgeseg.runtime.read.headers`, the rules
:func:`~edgeseg.runtime.read.discover_series` follows too); a complete series is handed out as the reader's
:class:`~edgeseg.runtime.read.SeriesRef` inside a :class:`~edgeseg.runtime.watch.jobs.SeriesJob`. The tracker
itself keeps only timing (settling, quiet periods, count time-outs) and bookkeeping (files, states, hand-outs).

Single-threaded by design: only the scheduler thread calls it. Time comes from an injectable monotonic clock.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from edgeseg.runtime.naming import is_edgeseg_output
from edgeseg.runtime.read import (DICOM, NIFTI, PARREC, REC, CandidateFilter, FileKind, Instance, SeriesGeometry,
                                  SeriesRef, SkippedFiles, check_image_file, dicom_geometry, expected_instances,
                                  file_kind, fingerprint, instance_from_header, par_candidates, read_dicom_header,
                                  rec_files, split_series, stamp_files)
from edgeseg.runtime.read.headers import LOCALIZER_ONLY, REFUSED
from edgeseg.runtime.read.selection import SelectionRules, select, series_rule
from edgeseg.runtime.watch.jobs import SeriesJob

log = logging.getLogger(__name__)

# file states
_SETTLING = "settling"  # seen, not yet unchanged across two looks
_FAILING = "failing"  # settled but its header did not read; invalid once unchanged for the quiet period
_PARSED = "parsed"  # DICOM header read and grouped
_INVALID = "invalid"
_WAITING = "waiting"  # NIfTI / PAR / REC: judged at series level


class PathFilterLike(Protocol):
    def file(self, path: Path) -> bool: ...

    def folder(self, path: Path) -> bool: ...


@dataclass
class _File:
    path: Path
    kind: FileKind
    size: int
    mtime_ns: int
    changed_at: float
    looked_at: float
    status: str = _SETTLING
    error: str | None = None
    series: str | None = None
    info: Instance | None = None


@dataclass
class _Series:
    """A series being tracked: the reader's ref as first seen (identity from the headers), and bookkeeping."""

    ref: SeriesRef
    files: set[Path] = field(default_factory=set)
    last_arrival: float = 0.0
    handed_out: str | None = None  # fingerprint last handed out; None while open
    waiting_logged: bool = False
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = self.ref.key

    @property
    def kind(self) -> str:
        return self.ref.kind

    @property
    def folder(self) -> Path:
        return self.ref.folder

    @property
    def name(self) -> str:
        return self.ref.name


@dataclass(frozen=True)
class PollResult:
    """What changed at one poll: series seen for the first time, and series that became complete."""

    discovered: tuple[SeriesRef, ...] = ()
    complete: tuple[SeriesJob, ...] = ()


class CompletionTracker:
    """Tracks candidate files and the series they form; see the module docstring for the rules.

    ``path_filter``: which files and folders are input (see :class:`~edgeseg.runtime.watch.observer.PathFilter`);
    on top of it the one symlink rule (:mod:`edgeseg.runtime.read.paths`) holds for every scanned and touched
    path: nothing reached through a symbolic link below ``roots`` (default: the filter's roots) is input.
    ``settle_s``: minimum time between the two identical looks before a header is read (default
    min(2 s, quiet/2)). ``echoes``: "all" or "first", the 3-D stacks of a DICOM series that holds several (echoes,
    image types, time points) to hand out (:func:`~edgeseg.runtime.read.split_series`). ``selection``: the series
    selection rules (:mod:`edgeseg.runtime.read.selection`; their ``multi_volume`` replaces ``echoes``): a series or
    stack a rule skips is handed out as a job with ``skip`` set to the rule and its reason. ``clock``: monotonic
    seconds; ``wall``: epoch seconds (to back-date scanned files).
    """

    def __init__(
        self,
        quiet_period_s: float,
        path_filter: PathFilterLike,
        settle_s: float | None = None,
        count_timeout_factor: float = 3.0,
        echoes: str = "all",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        roots: Iterable[Path] | None = None,
        hint_grace_s: float = 5.0,
        selection: SelectionRules | None = None,
    ) -> None:
        self.quiet = float(quiet_period_s)
        self.filter = path_filter
        self.candidates = CandidateFilter(roots if roots is not None else getattr(path_filter, "roots", ()))
        self.settle = float(settle_s) if settle_s is not None else min(2.0, self.quiet / 2)
        self.count_timeout = count_timeout_factor * self.quiet
        self.echoes = echoes
        #: the selection rules (None: every series, ``echoes`` picks the stacks): the read stage's
        #: :func:`~edgeseg.runtime.read.selection.select` decides, as for ``segment`` and ``run``
        self.selection = selection
        self.clock = clock
        self.wall = wall
        self._files: dict[Path, _File] = {}
        self._series: dict[str, _Series] = {}
        self._dirty: set[Path] = set()
        self._backdate: dict[Path, float] = {}
        self._reported_invalid: set[Path] = set()
        self.hint_grace = float(hint_grace_s)
        #: files the DICOM listener stored: path -> when the hint arrived (complete on arrival: no settling)
        self._received: dict[Path, float] = {}
        #: series folders -> associations still sending into them; folder -> when the last one ended
        self._open: dict[Path, set[int]] = {}
        self._ended: dict[Path, float] = {}

    # ---------------------------------------------------------------------------------------------------- input

    def received(self, path: Path, association: int) -> None:
        """The DICOM listener stored ``path`` (complete, durable) for ``association``."""
        path = Path(path)
        self._received[path] = self.clock()
        self._open.setdefault(path.parent, set()).add(association)
        self.touch(path)

    def association_ended(self, association: int, folders: Iterable[Path]) -> None:
        """The association that stored into ``folders`` ended (released, aborted or dropped)."""
        now = self.clock()
        for folder in folders:
            folder = Path(folder)
            senders = self._open.get(folder)
            if senders is not None:
                senders.discard(association)
                if not senders:
                    del self._open[folder]
            self._ended[folder] = now

    def touch(self, path: Path) -> None:
        """Something happened at ``path`` (created, modified, moved here or away, deleted; file or folder)."""
        path = Path(path)
        if not self.candidates.allows(path):  # a symbolic link (or below one): never followed, never input
            prefix = str(path) + os.sep
            for p in [p for p in self._files if p == path or str(p).startswith(prefix)]:
                self._forget(p)
            return
        if path in self._files:
            self._dirty.add(path)
            return
        try:
            is_dir = path.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            if self.filter.folder(path):
                self.scan(path)
        elif path.exists():
            if self.filter.file(path):
                self._dirty.add(path)
        else:  # a folder that went away: forget what was below it
            prefix = str(path) + os.sep
            for p in [p for p in self._files if str(p).startswith(prefix)]:
                self._dirty.add(p)

    def scan(self, root: Path, initial: bool = False) -> int:
        """Walk ``root`` and touch every input file; with ``initial`` files are back-dated by their mtime
        (capped) so that series that arrived while the watcher was down are not held for a quiet period."""
        n = 0
        now_wall = self.wall()
        if not self.candidates.allows(root):
            return n
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            for d in dirnames:
                if not d.startswith(".") and is_edgeseg_output(d) and not self.filter.folder(here / d):
                    self.candidates.output_lookalike(here / d)
            dirnames[:] = sorted(d for d in dirnames
                                 if self.filter.folder(here / d) and self.candidates.allows(here / d))
            for name in sorted(filenames):
                p = here / name
                if not self.filter.file(p) or not self.candidates.allows(p):
                    continue
                n += 1
                if p in self._files:
                    self._dirty.add(p)
                    continue
                if initial:
                    try:
                        age = max(0.0, now_wall - os.stat(p).st_mtime)
                    except OSError:
                        continue
                    self._backdate[p] = min(age, self.count_timeout + self.quiet)
                self._dirty.add(p)
        return n

    # ----------------------------------------------------------------------------------------------------- poll

    def poll(self) -> PollResult:
        """Look at changed and unsettled files, then report newly seen and newly complete series."""
        now = self.clock()
        discovered: list[SeriesRef] = []
        for path in sorted(self._dirty):
            self._look(path, now, discovered)
        blocked = {p.parent for p in self._dirty
                   if (f := self._files.get(p)) is not None and f.kind == DICOM and f.status in (_SETTLING, _FAILING)}
        complete: list[SeriesJob] = []
        for series in list(self._series.values()):
            if series.handed_out is None:
                complete.extend(self._check(series, now, blocked))
        complete.extend(self._orphans(blocked))
        return PollResult(tuple(discovered), tuple(complete))

    def _look(self, path: Path, now: float, discovered: list[SeriesRef]) -> None:
        if not self.candidates.allows(path):  # replaced by a symbolic link since it was seen: never read through it
            self._forget(path)
            return
        try:
            st = os.stat(path)
        except OSError:
            self._forget(path)
            return
        f = self._files.get(path)
        received = self._received.pop(path, None)
        if f is None:
            back = self._backdate.pop(path, 0.0)
            f = self._files[path] = _File(path, file_kind(path), st.st_size, st.st_mtime_ns,
                                          received if received is not None else now - back, now)
            if f.kind == DICOM and received is not None:  # written whole by our listener: read it now
                self._parse(f, now, discovered)
                if f.status == _PARSED:
                    self._dirty.discard(path)
                return
            if f.kind in (NIFTI, PARREC):
                self._file_series(f, now, discovered)
            elif f.kind == REC:
                self._touch_par_of(path, now)
            return  # stays dirty: needs a second look
        if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
            # a copy the listener stored (again) arrived when its hint came, whole: no settling
            arrived = received if received is not None else now
            f.size, f.mtime_ns, f.changed_at, f.looked_at = st.st_size, st.st_mtime_ns, arrived, now
            if f.status in (_PARSED, _INVALID):
                log.info("file changed after it was read, reading it again: file=%s", path)
                self._detach(f, arrived)
                self._reported_invalid.discard(path)
            if f.kind == DICOM:
                f.status = _SETTLING
                if received is not None:
                    self._parse(f, now, discovered)
                    if f.status == _PARSED:
                        self._dirty.discard(path)
                    return
            if f.kind == REC:
                self._touch_par_of(path, now)
            elif f.kind in (NIFTI, PARREC):
                self._reopen(f.series, now)
            return
        if f.kind != DICOM:
            f.status = _WAITING
            series = self._series.get(f.series or "")
            if series is not None and series.handed_out is not None:
                self._dirty.discard(path)  # handed out and unchanged: look again only when touched
            elif f.kind == REC and series is None and self._par_of(path) is None and now - f.changed_at >= self.quiet:
                f.status, f.error = _INVALID, "a PAR/REC data file (.REC) without its .PAR header file"
                self._dirty.discard(path)
            return
        if f.status == _SETTLING:
            if now - f.looked_at < self.settle and received is None:
                return
            self._parse(f, now, discovered)
        elif f.status == _FAILING and now - f.changed_at >= self.quiet:
            f.status = _INVALID
            log.warning("invalid file (unchanged for %.0f s and unreadable): file=%s reason=%s",
                        self.quiet, path, f.error)
        if f.status in (_PARSED, _INVALID):
            self._dirty.discard(path)

    def _parse(self, f: _File, now: float, discovered: list[SeriesRef]) -> None:
        if f.size == 0:
            f.status, f.error = _FAILING, "empty file (0 bytes)"
            return
        try:
            ds = read_dicom_header(f.path)
            if ds is None:
                raise ValueError("not a readable DICOM file (no DICOM preamble, or truncated/corrupt)")
            info = instance_from_header(ds)
        except Exception as err:  # noqa: BLE001 - any header failure is retried, then reported
            f.status = _FAILING
            f.error = (str(err) if isinstance(err, ValueError)
                       else f"DICOM header unreadable ({type(err).__name__}: {err})")
            return
        f.status, f.error, f.info = _PARSED, None, info
        ref = SeriesRef(DICOM, f.path.parent, (), info.series_uid or None, info.description, info.modality,
                        info.series_number, series_id=info.series_id)
        key = ref.key
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(ref)
            discovered.append(ref)
            log.info("new series: key=%s name=%s", key, ref.name)
        if f.path not in series.files and series.handed_out is not None:
            log.info("late instance re-opens series: key=%s file=%s", key, f.path.name)
            series.handed_out = None
        series.files.add(f.path)
        f.series = key
        series.last_arrival = max(series.last_arrival, f.changed_at)

    def _file_series(self, f: _File, now: float, discovered: list[SeriesRef]) -> None:
        ref = SeriesRef(f.kind, f.path, (f.path,), description=f.path.name)
        key = f.series = ref.key
        if key in self._series:
            return
        series = self._series[key] = _Series(ref, {f.path}, f.changed_at)
        discovered.append(ref)
        log.info("new image file: key=%s", key)
        if f.kind == PARREC:
            rec = self._rec_of(f.path)
            if rec is not None:
                series.files.add(rec)
                self._dirty.add(rec)

    # ------------------------------------------------------------------------------------------------- PAR/REC

    def _rec_of(self, par: Path) -> Path | None:
        """The .REC beside ``par``; None when there is none, or it is a symbolic link (the reader would follow it)."""
        recs = rec_files(par)
        return recs[0] if recs and self.candidates.allows(recs[0]) else None

    def _par_of(self, rec: Path) -> _Series | None:
        for par in par_candidates(rec):
            s = self._series.get(str(par))
            if s is not None:
                return s
        return None

    def _touch_par_of(self, rec: Path, now: float) -> None:
        series = self._par_of(rec)
        if series is not None:
            series.files.add(rec)
            self._files[rec].series = series.key
            self._reopen(series.key, now)

    # ----------------------------------------------------------------------------------------------- bookkeeping

    def _reopen(self, key: str | None, now: float) -> None:
        series = self._series.get(key or "")
        if series is None:
            return
        if series.handed_out is not None:
            log.info("series changed after it was handed out, re-opening: key=%s", key)
        series.handed_out = None
        series.waiting_logged = False
        series.last_arrival = max(series.last_arrival, now)
        for p in series.files:
            if p in self._files:
                self._dirty.add(p)

    def _detach(self, f: _File, now: float) -> None:
        if f.series and f.kind == DICOM:
            series = self._series.get(f.series)
            if series is not None:
                series.files.discard(f.path)
                self._reopen(series.key, now)
                if not series.files:
                    del self._series[series.key]
            f.series, f.info = None, None

    def _forget(self, path: Path) -> None:
        f = self._files.pop(path, None)
        self._dirty.discard(path)
        self._backdate.pop(path, None)
        self._reported_invalid.discard(path)
        if f is None or f.series is None:
            return
        series = self._series.get(f.series)
        if series is None:
            return
        series.files.discard(path)  # a deleted input does not re-open a handed-out series (clean-up is normal)
        if not series.files or (series.kind != DICOM and path == Path(series.key)):
            del self._series[series.key]
            log.info("series gone (its files were removed): key=%s", series.key)

    # ------------------------------------------------------------------------------------------------ completion

    def _check(self, series: _Series, now: float, blocked: set[Path]) -> list[SeriesJob]:
        if series.kind == DICOM:
            return self._check_dicom(series, now, blocked)
        return self._check_file(series, now)

    def _check_dicom(self, series: _Series, now: float, blocked: set[Path]) -> list[SeriesJob]:
        if series.folder in blocked:
            return []
        age = now - series.last_arrival
        if age < self.quiet and not self._sent_whole(series, now):
            return []
        instances = [f.info for p in series.files if (f := self._files.get(p)) is not None and f.info is not None]
        expected = expected_instances(instances)
        images = sum(1 for i in instances if i.is_image)
        notes: list[str] = []
        if expected is not None and images < expected:
            if age < self.count_timeout:
                if not series.waiting_logged:
                    series.waiting_logged = True
                    log.info("series quiet but incomplete, waiting: key=%s have=%d expected=%d", series.key,
                             images, expected)
                return []
            notes.append(f"the headers announce {expected} images, {images} arrived; proceeding after "
                         f"{age:.0f} s without new instances")
            log.warning("series incomplete after %.0f s, proceeding: key=%s have=%d expected=%d", age, series.key,
                        images, expected)
        problem = skip = None
        if self.selection is not None:
            members = [(p, f.info) for p in sorted(series.files)
                       if (f := self._files.get(p)) is not None and f.info is not None
                       and (f.info.is_image or f.info.non_image in REFUSED)]
            hit = series_rule([i for _, i in members], self.selection)
            if hit is not None:
                return self._hand_out(series, expected, None, None, (), notes, tuple(p for p, _ in members),
                                      f"{hit[0]}: {hit[1]}")
        if not images:  # the reason per class of file, in the words discovery uses (the error file carries it)
            skipped = SkippedFiles()
            for p in sorted(series.files):
                f = self._files.get(p)
                if f is not None and f.info is not None:
                    skipped.add(f.info.non_image or "no image", p)
            problem = f"nothing in this series can be segmented: {skipped.summary()}"
        elif all(i.is_localizer for i in instances if i.is_image):
            skip = LOCALIZER_ONLY
        invalid = self._invalid_in(series.folder)
        if invalid:
            notes.append(f"{len(invalid)} unreadable file(s) in the folder: "
                         + "; ".join(f"{n}: {e}" for n, e in invalid[:5]))
        images_files = tuple(sorted(p for p in series.files
                                    if (f := self._files.get(p)) is not None and f.info is not None
                                    and f.info.is_image))
        return self._hand_out(series, expected, dicom_geometry([i for i in instances if not i.is_localizer]),
                              problem, invalid, notes, images_files, skip)

    def _sent_whole(self, series: _Series, now: float) -> bool:
        """The listener's hint: the association(s) that sent this series ended ``hint_grace_s`` ago, none is still
        sending into its folder, and nothing arrived since."""
        ended = self._ended.get(series.folder)
        return (ended is not None and series.folder not in self._open and ended >= series.last_arrival
                and now - ended >= self.hint_grace)

    def _check_file(self, series: _Series, now: float) -> list[SeriesJob]:
        files = [self._files[p] for p in series.files if p in self._files]
        if not files or any(now - f.changed_at < self.quiet or f.status != _WAITING for f in files):
            return []
        main = Path(series.key)
        problem = None
        if series.kind == PARREC and self._rec_of(main) is None:
            if now - series.last_arrival < self.count_timeout:
                return []
            problem = f"{main.name} has no .REC data file beside it"
        geometry = None
        if problem is None:
            problem, geometry = check_image_file(main, series.kind)
        return self._hand_out(series, None, geometry, problem, (), [])

    def _hand_out(self, series: _Series, expected: int | None, geometry: SeriesGeometry | None,
                  problem: str | None, invalid: tuple[tuple[str, str], ...] | list[tuple[str, str]],
                  notes: list[str], image_files: tuple[Path, ...] = (), skip: str | None = None) -> list[SeriesJob]:
        """The job(s) of a complete series: one, or for a DICOM series holding several 3-D stacks at the same
        positions (echoes, image types, time points) one per stack (``echoes: first``: the first only), each with
        its own key, name, files and fingerprint, as discovery splits it (:func:`~edgeseg.runtime.read.split_series`).
        """
        files = tuple(sorted(series.files))
        fp = fingerprint(stamp_files(series.folder, files))
        series.handed_out = fp
        series.waiting_logged = False
        for p in files:
            self._dirty.discard(p)
        log.info("series complete: key=%s files=%d expected=%s fingerprint=%s%s", series.key, len(files), expected,
                 fp, f" problem={problem!r}" if problem else "")
        ref = replace(series.ref, expected_instances=expected, geometry=geometry)
        if ref.kind == DICOM:  # what the reader opens: the image instances the tracker grouped and fingerprinted
            ref = replace(ref, files=image_files or files)
            if problem is None and skip is None and self.selection is not None:
                members = [(p, f.info) for p in ref.files
                           if (f := self._files.get(p)) is not None and f.info and f.info.is_image]
                chosen = select(ref, members, self.selection)
                if len(chosen.refs) == 1 and chosen.refs[0].stack is None:  # one volume: the series as a whole
                    jobs = [SeriesJob.of(chosen.refs[0], files, fp, invalid_files=tuple(invalid), notes=tuple(notes))]
                else:
                    jobs = [SeriesJob.of(s, s.files, fingerprint(stamp_files(series.folder, s.files)),
                                         invalid_files=tuple(invalid), notes=tuple(notes)) for s in chosen.refs]
                if any(s.stack is not None for s in chosen.refs):
                    log.info("series holds 3-D stacks (echoes, image types or time points), handed out as: %s",
                             ", ".join(s.key for s in chosen.refs))
                for skipped in chosen.skipped:  # one skip job each: logged once by the worker, counted
                    target = next((s for s in split_series(ref, members, "all") if s.key == skipped.key), ref)
                    jobs.append(SeriesJob.of(target, skipped.files or files,
                                             fingerprint(stamp_files(series.folder, skipped.files or files)),
                                             skip=f"{skipped.rule}: {skipped.reason}"))
                return jobs
            if problem is None and skip is None:
                members = [(p, f.info) for p in ref.files if (f := self._files.get(p)) is not None and f.info]
                stacks = split_series(ref, members, self.echoes)
                if stacks[0].stack is not None:
                    log.info("series holds %d 3-D stacks (echoes, image types or time points), handed out as: %s",
                             stacks[0].stack.count, ", ".join(s.key for s in stacks))
                    return [SeriesJob.of(s, s.files, fingerprint(stamp_files(series.folder, s.files)),
                                         invalid_files=tuple(invalid), notes=tuple(notes)) for s in stacks]
        return [SeriesJob.of(ref, files, fp, problem=problem, invalid_files=tuple(invalid), notes=tuple(notes),
                             skip=skip)]

    def _invalid_in(self, folder: Path) -> list[tuple[str, str]]:
        return sorted((f.path.name, f.error or "unreadable") for f in self._files.values()
                      if f.status == _INVALID and f.path.parent == folder)

    def _orphans(self, blocked: set[Path]) -> list[SeriesJob]:
        """Invalid files in folders that hold no series: each gets a job of its own (and so an error file)."""
        out = []
        folders_with_series = {s.folder for s in self._series.values() if s.kind == DICOM}
        for f in self._files.values():
            if f.status != _INVALID or f.path in self._reported_invalid:
                continue
            if f.path.parent in blocked or f.path.parent in folders_with_series:
                continue
            self._reported_invalid.add(f.path)
            stamps = stamp_files(f.path.parent, [f.path])
            out.append(SeriesJob.invalid_file(f.path, f.error or "unreadable", fingerprint(stamps)))
            log.warning("unreadable file with no series beside it: file=%s reason=%s", f.path, f.error)
        return out

    # ------------------------------------------------------------------------------------------------- queries

    def idle(self) -> bool:
        """True when every file is settled and every series has been handed out (nothing is pending)."""
        if self._dirty or self._backdate:
            return False
        if any(s.handed_out is None for s in self._series.values()):
            return False
        return not any(f.status == _INVALID and f.path not in self._reported_invalid
                       and f.path.parent not in {s.folder for s in self._series.values()}
                       for f in self._files.values())

    def pending(self) -> list[dict[str, Any]]:
        """Open series (for status and logs): key, files, seconds since the last arrival."""
        now = self.clock()
        return [{"key": s.key, "name": s.name, "files": len(s.files), "quiet_for_s": round(now - s.last_arrival, 1)}
                for s in self._series.values() if s.handed_out is None]

    def counts(self) -> dict[str, int]:
        return {"files": len(self._files), "series": len(self._series), "unsettled": len(self._dirty)}
