"""Series completion: when has a series finished arriving?

Files arrive one by one (DICOM instances), several series interleaved in one folder, or as one image file
(NIfTI, PAR/REC). The tracker never reads a file that is still being written:

* Every candidate file is stat'ed at each :meth:`CompletionTracker.poll` until it has looked the same (size,
  mtime) at two looks at least ``settle_s`` apart; only then is its DICOM header read (without pixel data).
* A header that cannot be read (not DICOM, truncated, no SeriesInstanceUID) is retried when the file changes;
  once it has been unchanged for the quiet period it is an *invalid file*: attached to the series of its folder
  when there are any, else reported as a job of its own (kind ``invalid``) that ends in an error file.
* Instances are grouped by (folder, SeriesInstanceUID). A DICOM series is complete when no instance arrived for
  ``quiet_period_s`` (Orthanc's StableAge, mercure's series_complete_trigger), no file of its folder is still
  settling, and, where the headers announce a count (ImagesInAcquisition; NumberOfTemporalPositions x slice
  positions; InConcatenationTotalNumber for enhanced multi-frame, whose frames are in one file), that count is
  reached. A count not reached after ``count_timeout_factor`` quiet periods is waived (the reader decides).
* A NIfTI or PAR/REC series is complete when its files were unchanged for the quiet period and it opens.
* An instance arriving after a series was handed out re-opens it; it is handed out again, with a new
  fingerprint, once quiet again.

Files found by the first scan at start are back-dated by their mtime, so series that arrived while the watcher
was down do not wait a full quiet period; files that keep arriving still restart the clock.

Single-threaded by design: only the scheduler thread calls it. Time comes from an injectable monotonic clock.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from edgeseg.runtime.naming import dicom_series_name, is_edgeseg_output, series_key
from edgeseg.runtime.read import read_dicom_header
from edgeseg.runtime.read._dicom import _is_localizer, non_image_reason
from edgeseg.runtime.read.paths import CandidateFilter
from edgeseg.runtime.watch.jobs import (
    DICOM, INVALID, NIFTI, PARREC, SeriesGeometry, SeriesInfo, SeriesJob, file_series_name,
    fingerprint, invalid_file_name, stamp_files, world_axes,
)

log = logging.getLogger(__name__)

# file states
_SETTLING = "settling"  # seen, not yet unchanged across two looks
_FAILING = "failing"  # settled but its header did not read; invalid once unchanged for the quiet period
_PARSED = "parsed"  # DICOM header read and grouped
_INVALID = "invalid"
_WAITING = "waiting"  # NIfTI / PAR / REC: judged at series level

_REC = "rec"  # a PAR's data file


class PathFilterLike(Protocol):
    def file(self, path: Path) -> bool: ...

    def folder(self, path: Path) -> bool: ...


def file_kind(path: Path) -> str:
    """``nifti``, ``parrec``, ``rec`` (a PAR's data) or ``dicom`` (anything else is a DICOM candidate)."""
    name = path.name.lower()
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        return NIFTI
    if name.endswith(".par"):
        return PARREC
    if name.endswith(".rec"):
        return _REC
    return DICOM


@dataclass(frozen=True)
class Instance:
    """What the tracker keeps of one DICOM header."""

    series_uid: str
    sop_uid: str
    sop_class: str
    description: str
    series_number: int | None
    #: why the reader would not stack this instance (None: an image it stacks)
    non_image: str | None
    is_localizer: bool
    rows: int | None
    columns: int | None
    frames: int | None
    pixel_spacing: tuple[float, float] | None
    slice_spacing: float | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    images_in_acquisition: int | None
    temporal_positions: int | None
    concatenation_total: int | None

    @property
    def is_image(self) -> bool:
        """An instance the reader stacks (the same rule as :func:`edgeseg.runtime.read.discover_series`)."""
        return self.non_image is None


def _num(ds: Any, name: str, cast: Callable[[Any], Any] = int) -> Any:
    try:
        v = ds.get(name)
        if v is None or v == "":
            return None
        return cast(v)
    except (TypeError, ValueError, AttributeError):
        return None


def _floats(ds: Any, name: str, n: int) -> tuple[float, ...] | None:
    try:
        v = ds.get(name)
        if v is None:
            return None
        out = tuple(float(x) for x in v)
        return out if len(out) == n else None
    except (TypeError, ValueError):
        return None


def instance_from_header(ds: Any) -> Instance:
    """Extract the grouping and geometry fields; raises ValueError if there is no SeriesInstanceUID."""
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if not uid:
        raise ValueError("DICOM object without SeriesInstanceUID (truncated, or not an image object)")
    rows, cols = _num(ds, "Rows"), _num(ds, "Columns")
    spacing = _floats(ds, "PixelSpacing", 2)
    return Instance(
        series_uid=uid,
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        sop_class=str(ds.get("SOPClassUID", "") or ""),
        description=str(ds.get("SeriesDescription", "") or ""),
        series_number=_num(ds, "SeriesNumber"),
        non_image=non_image_reason(ds),
        is_localizer=_is_localizer(ds.get("ImageType")),
        rows=rows,
        columns=cols,
        frames=_num(ds, "NumberOfFrames"),
        pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
        slice_spacing=_num(ds, "SpacingBetweenSlices", float) or _num(ds, "SliceThickness", float),
        position=_floats(ds, "ImagePositionPatient", 3),  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        images_in_acquisition=_num(ds, "ImagesInAcquisition"),
        temporal_positions=_num(ds, "NumberOfTemporalPositions"),
        concatenation_total=_num(ds, "InConcatenationTotalNumber"),
    )


def expected_instances(instances: list[Instance]) -> int | None:
    """How many image instances the headers announce, or None when they do not say.

    Enhanced multi-frame: all frames are in one file (or InConcatenationTotalNumber files). Otherwise
    ImagesInAcquisition (as Orthanc), else NumberOfTemporalPositions x distinct slice positions.
    """
    images = [i for i in instances if i.is_image]
    if not images:
        return None
    if any((i.frames or 1) > 1 for i in images):
        totals = [i.concatenation_total for i in images if i.concatenation_total]
        return max(totals) if totals else None
    announced = [i.images_in_acquisition for i in images if i.images_in_acquisition]
    if announced:
        return max(announced)
    ntp = max((i.temporal_positions or 0) for i in images)
    if ntp > 1:
        positions = {tuple(round(c, 2) for c in i.position) for i in images if i.position}
        if positions:
            return ntp * len(positions)
    return None


def dicom_geometry(instances: list[Instance]) -> SeriesGeometry | None:
    """Shape (Columns, Rows, slices) and spacing of a DICOM series from its headers; None if they do not say."""
    images = [i for i in instances if i.is_image and i.rows and i.columns]
    if not images:
        return None
    first = images[0]
    ps = first.pixel_spacing or (1.0, 1.0)
    frames = max((i.frames or 1) for i in images)
    if frames > 1:  # enhanced: geometry per frame is in functional groups; take the count and nominal spacing
        return SeriesGeometry((first.columns or 0, first.rows or 0, frames * len(images)),
                              (ps[1], ps[0], first.slice_spacing or 1.0))
    dz = first.slice_spacing or 1.0
    axes = (0, 1, 2)
    n = len(images)
    if first.orientation and all(i.position for i in images):
        row = np.array(first.orientation[:3])
        col = np.array(first.orientation[3:])
        normal = np.cross(row, col)
        axes = world_axes([row, col, normal])
        along = sorted({round(float(np.dot(normal, i.position)), 3) for i in images})  # type: ignore[arg-type]
        n = len(along)
        if n > 1:
            dz = float(np.median(np.diff(along))) or dz
    return SeriesGeometry((int(first.columns), int(first.rows), int(n)),  # type: ignore[arg-type]
                          (float(ps[1]), float(ps[0]), float(dz)), axes)


def check_image_file(path: Path, kind: str) -> tuple[str | None, SeriesGeometry | None]:
    """(problem or None, geometry) for a NIfTI or PAR file: it must open and hold all its data."""
    try:
        import nibabel as nib

        from edgeseg.runtime.read.limits import quick_gzip_problem, read_nifti_header

        # NIfTI: the header only, and the gzip stream only when it promises little (bounded work on this thread,
        # whatever the file holds); the worker checks the limits and larger streams
        img: Any = read_nifti_header(path) if kind == NIFTI else nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) < 3:
            return f"{path.name} is a {len(shape)}-D image; a 3-D volume is needed", None
        if kind == NIFTI and path.name.lower().endswith(".gz"):
            problem = quick_gzip_problem(path, img)
            if problem:
                return f"{path.name} does not open as NIfTI ({problem})", None
        elif kind == NIFTI:
            need = int(img.header.get_data_offset()) + int(np.prod(shape)) * img.get_data_dtype().itemsize
            if os.path.getsize(path) < need:
                return f"{path.name} is shorter than its header says ({os.path.getsize(path)} < {need} bytes)", None
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        affine = np.asarray(img.affine)
        geom = SeriesGeometry((shape[0], shape[1], shape[2]), (zooms[0], zooms[1], zooms[2]),
                              world_axes([affine[:3, a] for a in range(3)]))
        return None, geom
    except Exception as err:  # noqa: BLE001 - any failure to open means "does not open"
        return f"{path.name} does not open as {'NIfTI' if kind == NIFTI else 'PAR/REC'} ({type(err).__name__}: {err})", None


@dataclass
class _File:
    path: Path
    kind: str
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
    key: str
    kind: str
    folder: Path
    name: str
    uid: str | None
    description: str = ""
    files: set[Path] = field(default_factory=set)
    last_arrival: float = 0.0
    handed_out: str | None = None  # fingerprint last handed out; None while open
    waiting_logged: bool = False
    series_number: int | None = None


@dataclass(frozen=True)
class PollResult:
    """What changed at one poll: series seen for the first time, and series that became complete."""

    discovered: tuple[SeriesInfo, ...] = ()
    complete: tuple[SeriesJob, ...] = ()


class CompletionTracker:
    """Tracks candidate files and the series they form; see the module docstring for the rules.

    ``path_filter``: which files and folders are input (see :class:`~edgeseg.runtime.watch.observer.PathFilter`);
    on top of it the one symlink rule (:mod:`edgeseg.runtime.read.paths`) holds for every scanned and touched
    path: nothing reached through a symbolic link below ``roots`` (default: the filter's roots) is input.
    ``settle_s``: minimum time between the two identical looks before a header is read (default
    min(2 s, quiet/2)). ``clock``: monotonic seconds; ``wall``: epoch seconds (to back-date scanned files).
    """

    def __init__(
        self,
        quiet_period_s: float,
        path_filter: PathFilterLike,
        settle_s: float | None = None,
        count_timeout_factor: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        roots: Iterable[Path] | None = None,
    ) -> None:
        self.quiet = float(quiet_period_s)
        self.filter = path_filter
        self.candidates = CandidateFilter(roots if roots is not None else getattr(path_filter, "roots", ()))
        self.settle = float(settle_s) if settle_s is not None else min(2.0, self.quiet / 2)
        self.count_timeout = count_timeout_factor * self.quiet
        self.clock = clock
        self.wall = wall
        self._files: dict[Path, _File] = {}
        self._series: dict[str, _Series] = {}
        self._dirty: set[Path] = set()
        self._backdate: dict[Path, float] = {}
        self._reported_invalid: set[Path] = set()

    # ---------------------------------------------------------------------------------------------------- input

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
        discovered: list[SeriesInfo] = []
        for path in sorted(self._dirty):
            self._look(path, now, discovered)
        blocked = {p.parent for p in self._dirty
                   if (f := self._files.get(p)) is not None and f.kind == DICOM and f.status in (_SETTLING, _FAILING)}
        complete: list[SeriesJob] = []
        for series in list(self._series.values()):
            if series.handed_out is None:
                job = self._check(series, now, blocked)
                if job is not None:
                    complete.append(job)
        complete.extend(self._orphans(blocked))
        return PollResult(tuple(discovered), tuple(complete))

    def _look(self, path: Path, now: float, discovered: list[SeriesInfo]) -> None:
        if not self.candidates.allows(path):  # replaced by a symbolic link since it was seen: never read through it
            self._forget(path)
            return
        try:
            st = os.stat(path)
        except OSError:
            self._forget(path)
            return
        f = self._files.get(path)
        if f is None:
            back = self._backdate.pop(path, 0.0)
            f = self._files[path] = _File(path, file_kind(path), st.st_size, st.st_mtime_ns, now - back, now)
            if f.kind in (NIFTI, PARREC):
                self._file_series(f, now, discovered)
            elif f.kind == _REC:
                self._touch_par_of(path, now)
            return  # stays dirty: needs a second look
        if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
            f.size, f.mtime_ns, f.changed_at, f.looked_at = st.st_size, st.st_mtime_ns, now, now
            if f.status in (_PARSED, _INVALID):
                log.info("file changed after it was read, reading it again: file=%s", path)
                self._detach(f, now)
                self._reported_invalid.discard(path)
            if f.kind == DICOM:
                f.status = _SETTLING
            if f.kind == _REC:
                self._touch_par_of(path, now)
            elif f.kind in (NIFTI, PARREC):
                self._reopen(f.series, now)
            return
        if f.kind != DICOM:
            f.status = _WAITING
            series = self._series.get(f.series or "")
            if series is not None and series.handed_out is not None:
                self._dirty.discard(path)  # handed out and unchanged: look again only when touched
            elif f.kind == _REC and series is None and self._par_of(path) is None and now - f.changed_at >= self.quiet:
                f.status, f.error = _INVALID, "a PAR/REC data file (.REC) without its .PAR header file"
                self._dirty.discard(path)
            return
        if f.status == _SETTLING:
            if now - f.looked_at < self.settle:
                return
            self._parse(f, now, discovered)
        elif f.status == _FAILING and now - f.changed_at >= self.quiet:
            f.status = _INVALID
            log.warning("invalid file (unchanged for %.0f s and unreadable): file=%s reason=%s",
                        self.quiet, path, f.error)
        if f.status in (_PARSED, _INVALID):
            self._dirty.discard(path)

    def _parse(self, f: _File, now: float, discovered: list[SeriesInfo]) -> None:
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
            f.error = str(err) if isinstance(err, ValueError) else f"DICOM header unreadable ({type(err).__name__}: {err})"
            return
        f.status, f.error, f.info = _PARSED, None, info
        key = series_key(DICOM, f.path.parent, info.series_uid)
        series = self._series.get(key)
        if series is None:
            series = _Series(key, DICOM, f.path.parent, dicom_series_name(info.description, info.series_uid),
                             info.series_uid, info.description, series_number=info.series_number)
            self._series[key] = series
            discovered.append(SeriesInfo(key, DICOM, series.folder, series.name, info.series_uid, info.description))
            log.info("new series: key=%s name=%s", key, series.name)
        if f.path not in series.files and series.handed_out is not None:
            log.info("late instance re-opens series: key=%s file=%s", key, f.path.name)
            series.handed_out = None
        series.files.add(f.path)
        f.series = key
        series.last_arrival = max(series.last_arrival, f.changed_at)

    def _file_series(self, f: _File, now: float, discovered: list[SeriesInfo]) -> None:
        key = series_key(f.kind, f.path)
        f.series = key
        if key in self._series:
            return
        series = _Series(key, f.kind, f.path.parent, file_series_name(f.path), None, f.path.name,
                         {f.path}, f.changed_at)
        self._series[key] = series
        discovered.append(SeriesInfo(key, f.kind, series.folder, series.name, None, f.path.name))
        log.info("new image file: key=%s", key)
        if f.kind == PARREC:
            rec = self._rec_of(f.path)
            if rec is not None:
                series.files.add(rec)
                self._dirty.add(rec)

    # ------------------------------------------------------------------------------------------------- PAR/REC

    def _rec_of(self, par: Path) -> Path | None:
        """The .REC beside ``par``; None when there is none, or it is a symbolic link (the reader would follow it)."""
        for ext in (".REC", ".rec", ".Rec"):
            candidate = par.with_suffix(ext)
            if os.path.lexists(candidate):
                return candidate if self.candidates.allows(candidate) else None
        return None

    def _par_of(self, rec: Path) -> _Series | None:
        for ext in (".PAR", ".par", ".Par"):
            s = self._series.get(str(rec.with_suffix(ext)))
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

    def _check(self, series: _Series, now: float, blocked: set[Path]) -> SeriesJob | None:
        if series.kind == DICOM:
            return self._check_dicom(series, now, blocked)
        return self._check_file(series, now)

    def _check_dicom(self, series: _Series, now: float, blocked: set[Path]) -> SeriesJob | None:
        if series.folder in blocked:
            return None
        age = now - series.last_arrival
        if age < self.quiet:
            return None
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
                return None
            notes.append(f"the headers announce {expected} images, {images} arrived; proceeding after "
                         f"{age:.0f} s without new instances")
            log.warning("series incomplete after %.0f s, proceeding: key=%s have=%d expected=%d", age, series.key,
                        images, expected)
        problem = skip = None
        if not images:
            reasons = sorted({i.non_image or "" for i in instances})
            problem = f"the series has no image the reader can stack ({'; '.join(reasons)}); only images can be segmented"
        elif all(i.is_localizer for i in instances if i.is_image):
            skip = "only localizer images"
        invalid = self._invalid_in(series.folder)
        if invalid:
            notes.append(f"{len(invalid)} unreadable file(s) in the folder: "
                         + "; ".join(f"{n}: {e}" for n, e in invalid[:5]))
        images_files = tuple(sorted(p for p in series.files
                                    if (f := self._files.get(p)) is not None and f.info is not None and f.info.is_image))
        return self._hand_out(series, expected, dicom_geometry([i for i in instances if not i.is_localizer]),
                              problem, invalid, notes, images_files, skip)

    def _check_file(self, series: _Series, now: float) -> SeriesJob | None:
        files = [self._files[p] for p in series.files if p in self._files]
        if not files or any(now - f.changed_at < self.quiet or f.status != _WAITING for f in files):
            return None
        main = Path(series.key)
        problem = None
        if series.kind == PARREC and self._rec_of(main) is None:
            if now - series.last_arrival < self.count_timeout:
                return None
            problem = f"{main.name} has no .REC data file beside it"
        geometry = None
        if problem is None:
            problem, geometry = check_image_file(main, series.kind)
        return self._hand_out(series, None, geometry, problem, (), [])

    def _hand_out(self, series: _Series, expected: int | None, geometry: SeriesGeometry | None,
                  problem: str | None, invalid: tuple[tuple[str, str], ...] | list[tuple[str, str]],
                  notes: list[str], image_files: tuple[Path, ...] = (), skip: str | None = None) -> SeriesJob:
        files = tuple(sorted(series.files))
        fp = fingerprint(stamp_files(series.folder, files))
        series.handed_out = fp
        series.waiting_logged = False
        for p in files:
            self._dirty.discard(p)
        log.info("series complete: key=%s files=%d expected=%s fingerprint=%s%s", series.key, len(files), expected,
                 fp, f" problem={problem!r}" if problem else "")
        return SeriesJob(series.key, series.kind, series.folder, series.name, files, fp, series.uid,
                         series.description, expected, geometry, problem, tuple(invalid), tuple(notes),
                         image_files, skip, series.series_number)

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
            name = invalid_file_name(f.path)
            out.append(SeriesJob(str(f.path), INVALID, f.path.parent, name, (f.path,), fingerprint(stamps),
                                 problem=f"{f.path.name} is not a readable image: {f.error}",
                                 invalid_files=((f.path.name, f.error or "unreadable"),)))
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
