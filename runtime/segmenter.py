"""The segmenter: set up once per bundle, then segment many series (the shape of nnU-Net's ``nnUNetPredictor``).

Every entry point is a thin caller of one :class:`Segmenter`: ``edgeseg segment``, one-shot mode (``edgeseg run``),
the watcher (and with it the DICOM node) and ``doctor``. The segmenter owns, for its bundle:

* the bundle, loaded (and verified) once, and the digest of its ``bundle.json`` (not re-hashed per series);
* the compiled OpenVINO engines of its parts, compiled on first use and kept (:meth:`Segmenter.engine`);
* the time-budget :class:`~edgeseg.runtime.plan.Planner` and its latency table (the only place a planner is
  built), used when a budget or a ceiling is set and no variant is pinned;
* the **time ceiling**, one mechanism for every stage: a :class:`Checkpoint` is called at every progress report
  (each tile), between the pipeline's stages and before each output is written; past the ceiling it raises
  :class:`~edgeseg.errors.TimeCeilingError` and nothing is published. A plan predicted over the ceiling is
  refused before the series starts;
* stop requests: ``segment(..., cancel=event)`` raises :class:`SeriesCancelled` at the next checkpoint;
* the out-of-memory policy: any ``MemoryError`` becomes :class:`~edgeseg.errors.OutOfMemoryError` naming the series.

:meth:`SeriesSegmenter.segment` segments one series into ``<name>.edgeseg/`` beside it (or under ``out_parent``) and
returns a typed :class:`~edgeseg.runtime.write.SegmentResult`. :class:`SeriesSegmenter` holds the policies;
:class:`Segmenter` adds the real pipeline (read -> preprocess -> infer -> postprocess -> write). Tests derive fakes
from :class:`SeriesSegmenter` so that the watcher's policies run unchanged around them.
"""
from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeseg.bundle.hashing import sha256_file
from edgeseg.bundle.schema import Bundle, Part, load_bundle
from edgeseg.errors import OutOfMemoryError, TimeCeilingError
from edgeseg.runtime.infer.engine import Engine, compile_part, engine_tile_latency
from edgeseg.runtime.options import SegmentOptions
from edgeseg.runtime.plan import LatencyTable, MeasureFn, Plan, Planner
from edgeseg.runtime.read import DICOM, SeriesGeometry, SeriesRef, Volume, read_series
from edgeseg.runtime.segment import Timings, run_manifest, segment_volume
from edgeseg.runtime.warmup import WarmUpRun, warm_up
from edgeseg.runtime.write import SegmentResult, describe_missing, write_results
from edgeseg.typing import StrPath

__all__ = ["Checkpoint", "ProgressCallback", "SeriesCancelled", "SeriesSegmenter", "Segmenter", "Source"]

log = logging.getLogger(__name__)

#: progress(stage, fraction of the series done)
ProgressCallback = Callable[[str, float], None]
#: what :meth:`SeriesSegmenter.segment` takes: a series found on disk, an already read volume, or a path
Source = SeriesRef | Volume | StrPath

#: compiled parts kept per segmenter (a TotalSegmentator-style bundle has up to four: two 1.5 mm parts, 3 mm, 6 mm)
MAX_ENGINES = 4


class SeriesCancelled(Exception):
    """A stop request cancelled the running series at a checkpoint. Not a failure: the watcher runs it again at its
    next start."""


@dataclass
class Checkpoint:
    """Where a running series may be stopped: called with ``(stage, fraction)`` at every progress report, between
    stages and before each output is written. Passes the report on to ``progress``, then raises
    :class:`SeriesCancelled` when ``cancel`` is set, or :class:`~edgeseg.errors.TimeCeilingError` once the series
    has run longer than ``ceiling_s`` since ``started`` (``time.monotonic()``)."""

    name: str
    started: float
    ceiling_s: float | None = None
    cancel: threading.Event | None = None
    progress: ProgressCallback | None = None
    predicted_s: float | None = None

    def __call__(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(stage, fraction)
        if self.cancel is not None and self.cancel.is_set():
            raise SeriesCancelled(self.name)
        elapsed = time.monotonic() - self.started
        if self.ceiling_s is not None and elapsed > self.ceiling_s:
            predicted = "" if self.predicted_s is None else f" (predicted {self.predicted_s:.0f} s)"
            raise TimeCeilingError(f"{self.name}: cancelled after {elapsed:.0f} s (at {stage}), past the time ceiling "
                                   f"of {self.ceiling_s:g} s per series{predicted}.")


def source_name(source: Source) -> str:
    """How messages name a series: the ref's or volume's name, else the path's."""
    if isinstance(source, (SeriesRef, Volume)):
        return source.name
    return Path(source).name


class SeriesSegmenter(ABC):
    """The policies of every segmenter (module docstring): planning against the budget, the time ceiling, stop
    requests, out of memory. Subclasses implement :meth:`_segment` (the pipeline) and may implement
    :meth:`_planning_input` (what the planner sees)."""

    #: shown in logs ("watcher started ... segmenter=...")
    name: str = "segmenter"

    def __init__(self, options: SegmentOptions | None = None, *, ceiling_s: float | None = None,
                 planner: Planner | None = None) -> None:
        self.options = options or SegmentOptions()
        self.ceiling_s = ceiling_s
        self.planner = planner

    def plan(self, geometry: SeriesGeometry | None, instances: int = 0, name: str = "") -> Plan | None:
        """The planner's choice for a series of this size (None: no planner, the options are used as they are).
        A plan with ``over_ceiling`` is refused by :meth:`segment`."""
        if self.planner is None:
            return None
        plan = self.planner.plan(geometry, self.options.time_budget_s, instances=instances, ceiling_s=self.ceiling_s)
        log.info("plan: series=%s variant=%s tile_step=%s predicted_s=%s fits=%s reason=%s", name, plan.variant,
                 plan.tile_step_size, None if plan.predicted_s is None else round(plan.predicted_s, 1), plan.fits,
                 plan.reason)
        return plan

    def segment(self, source: Source, *, out_parent: Path | None = None, plan: Plan | None = None,
                progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                record: bool = True) -> SegmentResult:
        """Segment one series and write its results atomically into ``<name>.edgeseg/`` beside it (or under
        ``out_parent``: one-shot mode, whose input may be read-only).

        ``plan``: the caller's plan (the watcher plans from headers before it records the run); None: planned here
        when there is a planner. A requested output that could not be written makes the result partial (its
        ``status``), it does not raise. ``record``: False for a run the planner must not learn from (the warm-up's
        prime, :mod:`edgeseg.runtime.warmup`: a process's first, cold run). Raises
        :class:`~edgeseg.errors.EdgesegError` subclasses (bad input, :class:`~edgeseg.errors.TimeCeilingError`,
        :class:`~edgeseg.errors.OutOfMemoryError` ...) and :class:`SeriesCancelled`; never modifies the input.
        """
        name = source_name(source)
        started = time.monotonic()
        timings = Timings()
        try:
            if plan is None and self.planner is not None:
                t0, read_before = time.perf_counter(), timings.read
                source, geometry, instances = self._planning_input(source, timings)
                plan = self.plan(geometry, instances, name)
                timings.plan += time.perf_counter() - t0 - (timings.read - read_before)
            if plan is not None and plan.over_ceiling:
                raise TimeCeilingError(f"{name}: {plan.reason} (not started).")
            options = self.options if plan is None else replace(self.options, variant=plan.variant,
                                                                tile_step_size=plan.tile_step_size)
            checkpoint = Checkpoint(name, started, self.ceiling_s, cancel, progress,
                                    plan.predicted_s if plan is not None else None)
            result = self._segment(source, options, out_parent, plan, checkpoint, timings)
        except OutOfMemoryError:
            raise
        except MemoryError as err:
            raise OutOfMemoryError(f"{name}: out of memory while segmenting ({type(err).__name__}: "
                                   f"{err or 'no details'}).") from err
        seconds = time.monotonic() - started
        budget = self.options.time_budget_s
        if budget is not None and seconds > budget:
            predicted = plan.predicted_s if plan is not None else None
            log.warning("series over its time budget: series=%s seconds=%.1f budget_s=%g predicted_s=%s stages=%s",
                        name, seconds, budget, None if predicted is None else round(predicted, 1),
                        result.timings)
        if record and plan is not None and self.planner is not None:
            stages = result.timings or {}
            read_write = (float(stages["read"]) + float(stages["write"])
                          if "read" in stages and "write" in stages else None)
            self.planner.record(plan, seconds, read_write_s=read_write, stages=stages)
        return result

    def warm_up(self, folder: Path, cancel: threading.Event | None = None, force: bool = False) -> list[WarmUpRun]:
        """Measure this PC, or prime this process, before the first series (:func:`edgeseg.runtime.warmup.warm_up`);
        a segmenter without the real pipeline has nothing to measure or prime."""
        return []

    def _planning_input(self, source: Source, timings: Timings) -> tuple[Source, SeriesGeometry | None, int]:
        """What the planner sees of ``source``: (the source to segment, its geometry, DICOM instances)."""
        if isinstance(source, SeriesRef):
            return source, source.geometry, len(source.files) if source.kind == DICOM else 0
        if isinstance(source, Volume):
            return source, SeriesGeometry.from_volume(source), len(source.dicom_files)
        return source, None, 0

    @abstractmethod
    def _segment(self, source: Source, options: SegmentOptions, out_parent: Path | None, plan: Plan | None,
                 checkpoint: Checkpoint, timings: Timings) -> SegmentResult:
        """Run the pipeline for one series with ``options`` (the plan applied); call ``checkpoint`` often."""


class Segmenter(SeriesSegmenter):
    """The real segmenter of one bundle (module docstring).

    ``bundle``: a loaded :class:`~edgeseg.bundle.schema.Bundle` or its folder (loaded here, its file hashes checked
    when ``verify``). ``options``: device, precision, threads, compiled-model cache, budget, outputs, read limits.
    ``ceiling_s``: the hard time ceiling per series (None: none). ``latency_path``: where the planner keeps the
    tile latencies measured on this PC (None: in memory). ``measure``: how a missing latency is measured (default:
    time a tile of the engine this segmenter compiles and keeps for the part); ``measure_missing=False``: plan
    only from what the table knows (``doctor``).
    """

    def __init__(self, bundle: Bundle | StrPath, options: SegmentOptions | None = None, *,
                 ceiling_s: float | None = None, latency_path: Path | None = None, measure: MeasureFn | None = None,
                 measure_missing: bool = True, verify: bool = False) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle), verify=verify)
        self.name = f"{self.bundle.name} ({self.bundle.path})"
        options = options or SegmentOptions()
        planner = None
        if (options.time_budget_s is not None or ceiling_s is not None) and options.variant is None:
            if measure is None and measure_missing:
                measure = self._measure_latency
            planner = Planner(self.bundle, LatencyTable(latency_path), options.device, options.precision,
                              options.threads, measure, compiled=self.compiled)
        super().__init__(options, ceiling_s=ceiling_s, planner=planner)
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()

    @cached_property
    def bundle_digest(self) -> str:
        """sha256 of the bundle's bundle.json, computed once (at the first series written: export's validation
        segments an in-memory bundle whose bundle.json is not written yet)."""
        return sha256_file(self.bundle.path / "bundle.json")

    def compiled(self, part: Part) -> bool:
        """Whether ``part``'s engine is compiled and kept (the planner predicts no compilation for it)."""
        return part.name in self._engines

    def _measure_latency(self, bundle: Bundle, part: Part, precision: str, device: str,
                         threads: int | None) -> float:
        """The planner's tile latency of ``part``, timed on the engine this segmenter keeps for it (the planner's
        precision, device and threads are this segmenter's options)."""
        return engine_tile_latency(self.engine(part))

    def engine(self, part: Part) -> Engine:
        """The compiled engine of ``part`` (compiled on first use, kept for the next series)."""
        with self._engines_lock:
            engine = self._engines.get(part.name)
            if engine is not None:
                self._engines.move_to_end(part.name)
                return engine
        o = self.options
        engine = compile_part(self.bundle, part, o.device, o.precision, o.threads, o.cache_dir)
        with self._engines_lock:
            self._engines[part.name] = engine
            while len(self._engines) > MAX_ENGINES:
                self._engines.popitem(last=False)
        return engine

    def warm_up(self, folder: Path, cancel: threading.Event | None = None, force: bool = False) -> list[WarmUpRun]:
        """Segment the shipped MRI under ``folder`` (results dropped): first as NIfTI, not recorded, where that is
        cheap, so that the process's one-off costs are not the first series'; then, when the planner has no runs of
        this bundle on this PC (``force``: even then), as NIfTI and as DICOM, recorded, so that the first series is
        predicted from measured rates (:func:`edgeseg.runtime.warmup.warm_up`)."""
        return warm_up(self, folder, cancel, force)

    def segment_volume(self, volume: Volume, options: SegmentOptions | None = None,
                       progress: ProgressCallback | None = None,
                       timings: Timings | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The label map of an in-memory volume on exactly its grid and the run record; nothing is written
        (export's validation and the benchmarks compare precisions this way)."""
        return segment_volume(volume, self.bundle, options or self.options, self.engine, progress, timings)

    def _planning_input(self, source: Source, timings: Timings) -> tuple[Source, SeriesGeometry | None, int]:
        if isinstance(source, SeriesRef) and source.geometry is not None:
            return super()._planning_input(source, timings)
        volume = self._read(source, timings)  # the planner needs the size: read first (the volume is reused)
        return super()._planning_input(volume, timings)

    def _read(self, source: Source, timings: Timings) -> Volume:
        if isinstance(source, Volume):
            return source
        t0 = time.perf_counter()
        volume = read_series(source, self.options.limits)
        timings.read += time.perf_counter() - t0
        return volume

    def _segment(self, source: Source, options: SegmentOptions, out_parent: Path | None, plan: Plan | None,
                 checkpoint: Checkpoint, timings: Timings) -> SegmentResult:
        volume = self._read(source, timings)
        checkpoint("read", 0.0)
        log.info("segmenting series=%s shape=%s spacing=%s", volume.name, volume.shape,
                 tuple(round(s, 3) for s in volume.spacing))
        labels, record = segment_volume(volume, self.bundle, options, self.engine, checkpoint, timings)
        checkpoint("postprocess", 1.0)
        manifest = run_manifest(self.bundle, self.bundle_digest, volume, options, record)
        if plan is not None:
            manifest["plan"] = plan.to_dict()
        result = write_results(volume, labels, self.bundle.labels, options.outputs, manifest, out_parent=out_parent,
                               checkpoint=checkpoint, started=checkpoint.started)
        written = result.manifest.get("run", {}).get("timings_s", {})  # the manifest's: write and other added
        timings.write, timings.other = float(written.get("write", 0.0)), float(written.get("other", 0.0))
        if result.missing_outputs:
            log.warning("partial series=%s output=%s total_s=%.2f: %s", volume.name, result.output_dir,
                        timings.total, describe_missing(result.missing_outputs))
        else:
            log.info("done series=%s output=%s total_s=%.2f", volume.name, result.output_dir, timings.total)
        return replace(result, timings=timings.rounded())

