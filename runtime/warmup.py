"""Warm-up: measure this PC's costs around the network before the first real series of a bundle, or prime a
restarted process.

The planner (:mod:`edgeseg.runtime.plan`) predicts a series stage by stage from the runs on this PC. On a PC that
has run nothing with a bundle it has only its guesses, set for a PC slower than most (a first series predicted
+68 % on the 2-core AMD EPYC Zen 4, a first DICOM series after NIfTI ones +125 %): a site's first series may then
run a faster variant it did not need, or, on a PC slower than the guesses, overrun its budget.

:func:`warm_up` segments the MRI shipped with edgeseg (:func:`edgeseg.demo.demo_mri_path`, 117x91x20 at 3 mm),
through the segmenter's own pipeline with the outputs the settings ask for, as a NIfTI file and as a classic MR
DICOM series of the same grid (after the prime, below). Both on one grid: a small run of another spacing would be
the one run that splits the per-voxel cost of preprocessing and resampling back between the network's grid and the
input's (fitted as a plane once the runs span it, :func:`~edgeseg.runtime.plan.fit_stage_joint`), and a 1.5 mm
warm-up beside a site's 1.19 mm series moved a 0.5 mm series' prediction +30 %; that split is left to the site's
own series. The planner records the two runs as it records every series (its
:class:`~edgeseg.runtime.plan.LatencyTable`), so the first real series is predicted from this PC's measured rates;
the engines are compiled and the tile latencies measured on the way, which the first series would pay otherwise.
The DICOM copy and the results live in a hidden folder of their own under ``folder`` (the watcher's state folder) and
are removed afterwards; the shipped NIfTI is only read. The watcher runs it before its first series (``warm_up``, on
by default).

A process's first series pays what a process pays once: the window's small aggregation kernels compiled on first
use, thread pools started, modules imported (measured on the 2-core Zen 4 with the demo bundle: a 117x91x20
series' first run in a new process 0.49-0.56 s, the next run of it 0.42-0.44 s: 11-27 % more; a 320x260x72
series' first run was not measurably slower: the one-off costs are 0.05-0.12 s). Learnt from, that cold run put
the prediction of the next series of its size +13 to +37 % above the seconds it took (a fresh PC's first series
after the warm-up); left to the first series, it put a restarted watcher's first small series' prediction 26-29 %
below them (``benchmarks/series_scaling.py --warm-up``, 2026-12-07). So the
warm-up first **primes** the process with the shipped NIfTI, not recorded, where that costs little: the planner's
prediction for it (on a fresh PC its guesses and the tile latencies measured then) at most :data:`PRIME_MAX_S`
beyond compiling (the demo bundle's 0.45 s; a TotalSegmentator-sized bundle's 16 s would buy under 2 % of its
first series and is not spent). On a PC whose latency table has runs of the bundle (a restarted watcher) the
prime is all it does. Once per planner and process.

A warm-up that fails is a WARNING and the watcher goes on (its first series is then planned from the guesses, or
not primed); a stop request ends it at the segmenter's next checkpoint. A watcher started with ``--once`` and
``edgeseg demo`` (whose state folder is temporary) do not warm up.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgeseg.errors import EdgesegError
from edgeseg.runtime.plan import Planner

__all__ = ["PRIME_MAX_S", "Segments", "WarmUpRun", "warm_up", "warm_up_inputs"]

log = logging.getLogger(__name__)

#: the most seconds the planner may predict for the prime (the shipped NIfTI) for it to run: it saves a process's
#: one-off costs, 0.05-0.12 s with the demo bundle (module docstring)
PRIME_MAX_S = 2.0
#: one warm-up at a time per process (a watcher's workers wait for it, then find it done or tried)
_LOCK = threading.Lock()
#: the planners whose warm-up this process has tried (one that failed is not tried again by every worker)
_TRIED: weakref.WeakSet[Planner] = weakref.WeakSet()


class Segments(Protocol):
    """What the warm-up needs of a segmenter (:class:`edgeseg.runtime.segmenter.SeriesSegmenter`): its name, its
    planner and :meth:`segment`."""

    name: str
    planner: Planner | None

    def segment(self, source: Any, *, out_parent: Path | None = None, cancel: threading.Event | None = None,
                record: bool = True) -> Any: ...


@dataclass(frozen=True)
class WarmUpRun:
    """One warm-up series: what it was and the seconds it took (the manifest's per-stage timings)."""

    kind: str
    shape: tuple[int, int, int]
    seconds: float
    timings: dict[str, float]
    #: whether the planner learnt from it (False: the prime)
    recorded: bool = True


def warm_up_inputs(folder: Path, dicom: bool = True) -> list[tuple[str, Path, tuple[int, int, int]]]:
    """The warm-up series: (kind, path, shape) of the shipped MRI itself (NIfTI, only read: the results go to a
    folder of their own) and, with ``dicom``, of a classic DICOM series of the same grid written under ``folder``.
    :class:`~edgeseg.errors.BundleError` when this installation lacks the MRI."""
    from edgeseg.demo import demo_mri_path
    from edgeseg.demo.dicom_series import write_dicom_series
    from edgeseg.runtime.read import read_series

    mri = demo_mri_path()
    volume = read_series(mri)
    if not dicom:
        return [("nifti", mri, volume.shape)]
    copy = folder / "warm-up-dicom"
    write_dicom_series(volume, copy, series_description="edgeseg warm-up", patient_id="EDGESEG-WARM-UP")
    return [("nifti", mri, volume.shape), ("dicom", copy, volume.shape)]


def warm_up(segmenter: Segments, folder: Path, cancel: threading.Event | None = None,
            force: bool = False) -> list[WarmUpRun]:
    """Segment the warm-up series (module docstring) with ``segmenter`` under ``folder``: first the prime where it
    is cheap (the NIfTI, not recorded), then, when its planner has no runs of this bundle on this PC (``force``: even
    when it has), the NIfTI and the DICOM copy, recorded; not when this process tried it for that planner before
    (``force``: even then). Returns the runs: empty when there was nothing to do, when it failed (a WARNING; it is
    not tried again in this process) or when ``cancel`` was set (a stop request: it ends at the segmenter's next
    checkpoint, nothing is raised). Never raises: a warm-up does not stop a watcher. What a killed process left
    under ``folder`` (``.edgeseg-warm-up-*``) is removed first."""
    planner = segmenter.planner
    if planner is None:  # no budget and no ceiling: nothing is planned, nothing to learn
        return []
    with _LOCK:
        if not force and planner in _TRIED:
            return []
        _TRIED.add(planner)
        measure = force or not planner.has_runs()
        runs: list[WarmUpRun] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(".edgeseg-warm-up-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if cancel is not None and cancel.is_set():
                return runs
            predicted = _prime_cost(planner)  # on a fresh PC: its guesses and the tile latencies measured now
            prime = predicted <= PRIME_MAX_S  # an estimate that failed is inf: no prime, the measuring goes on
            if not prime:
                log.info("warm-up: not priming this process (bundle=%s): the shipped MRI is predicted %.1f s, more "
                         "than the first series' one-off costs are worth (PRIME_MAX_S %.1f s)", segmenter.name,
                         predicted, PRIME_MAX_S)
                if not measure:
                    return runs
            if measure:
                log.info("warm-up: measuring this PC with the shipped MRI before the first series (bundle=%s "
                         "device=%s threads=%s; primed first: %s)", segmenter.name, planner.device,
                         planner.threads or "auto", "yes" if prime else "no")
            else:
                log.info("warm-up: priming this process with the shipped MRI before the first series (bundle=%s: "
                         "this PC's rates are known; what a process pays once is paid now; predicted %.1f s)",
                         segmenter.name, predicted)
            with tempfile.TemporaryDirectory(prefix=".edgeseg-warm-up-", dir=folder,
                                             ignore_cleanup_errors=True) as tmp:
                inputs = warm_up_inputs(Path(tmp) / "inputs", dicom=measure)
                series = [(*inputs[0], False)] if prime else []  # the prime: the process's cold run, not learnt
                series += [(*item, True) for item in inputs] if measure else []
                results = Path(tmp) / "results"
                results.mkdir()
                for i, (kind, path, shape, record) in enumerate(series, 1):
                    if cancel is not None and cancel.is_set():
                        return runs
                    t0 = time.monotonic()
                    result = segmenter.segment(path, out_parent=results, cancel=cancel, record=record)
                    seconds = time.monotonic() - t0
                    runs.append(WarmUpRun(kind, shape, seconds, dict(result.timings or {}), record))
                    log.info("warm-up series %d/%d done: kind=%s shape=%s recorded=%s seconds=%.2f", i, len(series),
                             kind, "x".join(map(str, shape)), record, seconds)
        except Exception as err:  # noqa: BLE001 - a failed warm-up never stops the watcher
            if cancel is not None and cancel.is_set():  # the segmenter's SeriesCancelled: a stop, not a failure
                log.info("warm-up stopped by a stop request")
                return runs
            log.warning("warm-up failed, the first series is %s: error=%s%s",
                        "planned from the planner's guesses" if measure else "not primed (it pays the process's "
                        "one-off costs)", err, "" if isinstance(err, EdgesegError) else f" ({type(err).__name__})")
        return runs


def _prime_cost(planner: Planner) -> float:
    """The planner's seconds for the shipped NIfTI (the prime) from this PC's rates (on a fresh PC its guesses and
    the tile latencies), less compiling the engines and measuring their latencies, which the first series would
    pay otherwise; inf where it cannot be estimated (the prime is optional: it never stops the measuring)."""
    from edgeseg.demo import demo_mri_path
    from edgeseg.runtime.read import SeriesGeometry, read_series

    try:
        # an unbounded budget: the most accurate variant, predicted (no budget at all plans nothing)
        plan = planner.plan(SeriesGeometry.from_volume(read_series(demo_mri_path())), float("inf"))
    except Exception as err:  # noqa: BLE001 - see the docstring
        log.info("warm-up: the prime's cost was not estimated (%s: %s): no prime", type(err).__name__, err)
        return float("inf")
    if plan.predicted_s is None:
        return float("inf")
    return (float(plan.predicted_s) - float(plan.details.get("compile_s") or 0.0)
            - float(plan.details.get("measuring_s") or 0.0))
