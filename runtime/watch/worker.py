"""The watcher's workers: each takes a complete series from the job queue, runs it and records the outcome.

Running one series (:meth:`Worker.run`) is a row of small steps: refuse what the headers say is over ``limits``,
plan against the time budget, mark it ``running``, let the segmenter segment it, then record ``done`` (and the
DICOM files to deliver, in the same store transaction), ``partial`` (a requested output missing) or ``failed``
(retried with back-off until ``max_attempts``), with ``<name>.edgeseg-error.json`` beside the series for the last
two. :func:`delivery_settled` is the delivery thread's callback when a result's deliveries ended a round.
"""
from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from edgeseg.errors import (
    BundleError, ConfigError, DeliveryError, EdgesegError, InvalidSeriesError, PartialResultError, TimeCeilingError,
    kind_of, remedy_for,
)
from edgeseg.runtime.node.settings import RESULT_ROLE
from edgeseg.runtime.plan import Plan
from edgeseg.runtime.read import DICOM, NIFTI, PARREC
from edgeseg.runtime.read.limits import check_frames, check_nifti_header, check_voxels
from edgeseg.runtime.segmenter import ProgressCallback, SeriesCancelled, SeriesSegmenter
from edgeseg.runtime.watch.config import WatchConfig
from edgeseg.runtime.watch.deliver import DeliveryWorker
from edgeseg.runtime.watch.facts import result_facts, series_facts
from edgeseg.runtime.watch.heartbeat import Running
from edgeseg.runtime.watch.jobs import INVALID, SeriesJob
from edgeseg.runtime.watch.store import FAILED, DeliveryRequest, JobStore
from edgeseg.runtime.write import PARTIAL, SegmentResult, describe_missing
from edgeseg.runtime.write.atomic import clear_error_file, write_error_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRecord:
    """One finished attempt, kept in memory for ``--once`` summaries and benchmarks."""

    key: str
    name: str
    ok: bool
    seconds: float
    output: Path | None
    error: str | None
    plan: Plan | None
    budget_s: float | None
    #: segmented, but a requested output is missing (``error`` names it): ``ok`` and ``partial``
    partial: bool = False

    @property
    def within_budget(self) -> bool | None:
        return None if self.budget_s is None else self.seconds <= self.budget_s


def write_error(folder: Path, name: str, err: BaseException, what_to_do: str) -> None:
    """``<name>.edgeseg-error.json`` in ``folder``; a folder that cannot be written is only logged."""
    try:
        write_error_file(folder, name, err, what_to_do)
    except Exception as werr:  # noqa: BLE001 - a read-only folder must not stop the watcher
        log.error("error file not written: folder=%s name=%s error=%s", folder, name, werr)


def _clear_error(folder: Path, name: str, key: str) -> None:
    try:
        clear_error_file(folder, name)
    except (OSError, EdgesegError) as err:
        log.warning("old error file not removed: key=%s error=%s", key, err)


def _remove_stale_temporaries(job: SeriesJob) -> None:
    """Remove ``.<name>.edgeseg.partial-*`` / ``.old-*`` folders a killed run of this series left behind (the
    writer cleans up after itself unless the process is killed). Only hidden temporaries of this very name."""
    for pattern in (f".{job.name}.edgeseg.partial-*", f".{job.name}.edgeseg.old-*"):
        for stale in job.folder.glob(pattern):
            log.info("removing a temporary folder left by an interrupted run: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _progress(job: SeriesJob, running: Running) -> ProgressCallback:
    def progress(stage: str, fraction: float) -> None:
        log.debug("progress: key=%s stage=%s fraction=%.2f", job.key, stage, fraction)
        running.progress(job.key, stage, fraction)
    return progress


def delivery_settled(store: JobStore, stats: Counter[str], key: str) -> None:
    """(delivery thread) The deliveries of ``key``'s result ended a round: one refused for good makes the series
    partial, with ``<name>.edgeseg-error.json`` (kind ``delivery``) beside it; once a retry delivered them all, a
    series that was partial only for that is done again and the error file goes."""
    row = store.get(key)
    if row is None:
        return
    failed = [d for d in store.deliveries_of(key) if d.state == FAILED]
    if failed:
        message = "; ".join(f"{d.role.upper()} not delivered to {d.destination}: {d.last_error}" for d in failed)
        store.mark_undelivered(key, message)
        stats["undelivered"] += 1
        write_error(row.folder_path, row.name, DeliveryError(message),
                    f"{remedy_for(DeliveryError)} The masks and the other results are in {row.output_dir}.")
    elif store.mark_delivered(key):
        _clear_error(row.folder_path, row.name, key)


def delivery_worker(config: WatchConfig, store: JobStore, stop: threading.Event,
                    stats: Counter[str]) -> DeliveryWorker:
    """The delivery worker of ``config``'s destinations over ``store`` (the watcher's delivery thread, and
    ``edgeseg deliver --now`` when no watcher runs): calling as the listener's AE title when there is a listener,
    each result settled by :func:`delivery_settled` (counted in ``stats``), label-map SEGs as ``outputs.seg_type``
    says now."""
    listener_ae = config.node.listener.ae_title if config.node.listener.enabled else None
    return DeliveryWorker(store, config.node.destinations, config.node.delivery, listener_ae, stop,
                          on_settled=partial(delivery_settled, store, stats), seg_type=str(config.outputs.seg_type))


class Worker:
    """Runs the series the scheduler queues, in each worker thread (:meth:`loop`), until ``stop`` is set.

    ``jobs``/``finished``: the scheduler's queues (each job comes back on ``finished`` with its outcome: ``done``,
    ``partial``, ``failed``, ``retry``, ``skipped``, ``cancelled`` or ``not started``); ``cancel``: set to cancel
    the running series at its next progress report; ``running``: the series running now; ``stats``, ``history``,
    ``results``: the watcher's counts, finished attempts and results, filled here; ``delivery``: woken when a
    result has files to deliver. ``once``: a failure is not retried in this process.
    """

    def __init__(self, config: WatchConfig, store: JobStore, segmenter: SeriesSegmenter, *,
                 jobs: queue.Queue[SeriesJob], finished: queue.SimpleQueue[tuple[SeriesJob, str]],
                 stop: threading.Event, cancel: threading.Event, running: Running, stats: Counter[str],
                 history: list[JobRecord], results: dict[str, Any], delivery: DeliveryWorker | None = None,
                 once: bool = False) -> None:
        self.config = config
        self.store = store
        self.segmenter = segmenter
        self.jobs = jobs
        self.finished = finished
        self.stop = stop
        self.cancel = cancel
        self.running = running
        self.stats = stats
        self.history = history
        self.results = results
        self.delivery = delivery
        self.once = once

    def loop(self) -> None:
        """One worker thread: take a job, run it, report its outcome on ``finished``. First the warm-up
        (``warm_up``, not with ``once``; :mod:`edgeseg.runtime.warmup`: one worker runs it, the others wait for
        it): the shipped MRI as NIfTI, not recorded, where cheap; then, when this PC has run no series of the bundle,
        as NIfTI and DICOM, recorded."""
        if self.config.warm_up and not self.once:  # a run of what is there now neither measures nor primes for later
            try:
                self.segmenter.warm_up(self.config.state_dir, cancel=self.stop)
            except Exception:  # noqa: BLE001 - the warm-up logs its own failures; nothing of it stops the worker
                log.warning("warm-up failed; the worker goes on to its series", exc_info=True)
        while not self.stop.is_set():
            try:
                job = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            if self.stop.is_set():  # stays 'complete' in the store: found again at the next start
                self.finished.put((job, "not started"))
                break
            outcome = "failed"
            try:
                outcome = self.run(job)
            except Exception:  # noqa: BLE001 - bookkeeping failed (store, disk); keep the worker alive
                log.exception("worker could not record series %s", job.key)
            finally:
                self.finished.put((job, outcome))

    # ------------------------------------------------------------------------------------------ one series

    def run(self, job: SeriesJob) -> str:
        """Run one series and record its outcome; returns it (see the class docstring)."""
        for note in job.notes:
            log.warning("series note: key=%s %s", job.key, note)
        if job.skip is not None:
            return self._skip(job)
        refused = self._refusal(job)
        plan = self._plan(job) if refused is None else None
        _remove_stale_temporaries(job)
        attempt = self.store.mark_running(job.key, plan.to_dict() if plan else None, self.config.time_budget_s,
                                          plan.predicted_s if plan else None)
        self.running.add(job.key)
        self.store.set_facts(job.key, **series_facts(job))
        t0 = time.perf_counter()
        try:
            result = self._segment(job, plan, refused)
        except SeriesCancelled:
            self.store.mark_cancelled(job.key)
            log.info("series cancelled by stop request; it runs again at the next start: key=%s", job.key)
            return "cancelled"
        except Exception as err:  # noqa: BLE001 - every failure is recorded, none stops the watcher
            return self._fail(job, err, attempt, time.perf_counter() - t0, plan)
        finally:
            self.running.discard(job.key)
        seconds = time.perf_counter() - t0
        if result.status == PARTIAL or result.missing_outputs:
            return self._record_partial(job, result, seconds, plan)
        return self._record_done(job, result, seconds, plan)

    def _skip(self, job: SeriesJob) -> str:
        """Nothing to do (a selection rule, or localizers only): recorded as skipped (not a job, not failed),
        logged once per input (again at debug level)."""
        new = self.store.mark_skipped(job.key, job.kind, job.folder, job.series_uid, job.description, job.skip or "",
                                      job.fingerprint)
        self.stats["skipped"] += 1
        log.log(logging.INFO if new else logging.DEBUG, "series skipped: key=%s reason=%s", job.key, job.skip)
        return "skipped"

    @staticmethod
    def _runnable(job: SeriesJob) -> bool:
        return job.problem is None and job.kind != INVALID

    def _refusal(self, job: SeriesJob) -> EdgesegError | None:
        """Why the headers refuse the series (:meth:`check_limits`), or None."""
        if not self._runnable(job):
            return None
        try:
            self.check_limits(job)
        except InvalidSeriesError as err:  # SeriesTooLargeError, or a header that no longer reads
            return err
        return None

    def check_limits(self, job: SeriesJob) -> None:
        """Refuse (:class:`SeriesTooLargeError`) a series whose headers promise more than ``limits`` allow; header
        work only (the reader bounds the decompression itself)."""
        limits = self.config.limits
        if job.kind == NIFTI:
            check_nifti_header(job.source, limits)
            return
        what = f"Series {job.series_uid or job.name}" if job.kind == DICOM else str(job.key)
        if job.kind == DICOM:
            check_frames(len(job.image_files), what, limits)
        if job.geometry is not None and job.kind in (DICOM, PARREC):
            check_voxels(tuple(job.geometry.shape), what, limits)

    def _plan(self, job: SeriesJob) -> Plan | None:
        """Planned here (from the headers) to be recorded with the run; the segmenter refuses one over the
        ceiling."""
        if not self._runnable(job):
            return None
        return self.segmenter.plan(job.geometry, len(job.image_files) if job.kind == DICOM else 0, job.key)

    def _segment(self, job: SeriesJob, plan: Plan | None, refused: EdgesegError | None) -> SegmentResult:
        if job.problem is not None or job.ref is None:
            raise InvalidSeriesError(f"{job.problem or job.key}.")
        if refused is not None:
            raise refused
        return self.segmenter.segment(job.ref, plan=plan, progress=_progress(job, self.running), cancel=self.cancel)

    # ------------------------------------------------------------------------------------------ outcomes

    def _record_partial(self, job: SeriesJob, result: SegmentResult, seconds: float, plan: Plan | None) -> str:
        """Segmented, but a requested output is missing: ``partial`` row, error file (kind ``partial``)."""
        output, missing = result.output_dir, result.missing_outputs
        message = (f"{describe_missing(missing) or 'a requested output was not written (see manifest.json)'}. "
                   f"The series was segmented: the masks and the other results are in {output}.")
        self.store.mark_partial(job.key, output, seconds, message, deliveries=self.deliveries(job, result))
        incomplete = PartialResultError(message)
        write_error(job.folder, job.name, incomplete, f"{remedy_for(incomplete)} The watcher tries again when the "
                    "files change.")
        self._published(job, result)
        self.stats["partial"] += 1
        self.history.append(JobRecord(job.key, job.name, True, seconds, output, message, plan,
                                      self.config.time_budget_s, partial=True))
        log.warning("series partial: key=%s seconds=%.1f output=%s%s missing=%s", job.key, seconds, output,
                    self._over_budget(seconds), describe_missing(missing))
        return "partial"

    def _record_done(self, job: SeriesJob, result: SegmentResult, seconds: float, plan: Plan | None) -> str:
        output = result.output_dir
        self.store.mark_done(job.key, output, seconds, deliveries=self.deliveries(job, result))
        _clear_error(job.folder, job.name, job.key)
        self._published(job, result)
        self.stats["done"] += 1
        self.history.append(JobRecord(job.key, job.name, True, seconds, output, None, plan,
                                      self.config.time_budget_s))
        log.info("series done: key=%s seconds=%.1f output=%s%s", job.key, seconds, output, self._over_budget(seconds))
        return "done"

    def _published(self, job: SeriesJob, result: SegmentResult) -> None:
        self.store.set_facts(job.key, **result_facts(result.manifest))
        if self.delivery is not None:
            self.delivery.wake()
        self.results[job.key] = result

    def _over_budget(self, seconds: float) -> str:
        budget = self.config.time_budget_s
        return "" if budget is None or seconds <= budget else " OVER BUDGET"

    def deliveries(self, job: SeriesJob, result: SegmentResult) -> list[DeliveryRequest]:
        """The result's DICOM files for each destination (by its ``send`` roles), with their SOP Instance UIDs."""
        destinations = self.config.node.destinations
        files = result.files
        if not destinations or not files:
            return []
        from pydicom import dcmread

        out: list[DeliveryRequest] = []
        uids: dict[Path, str] = {}
        for destination in destinations:
            for role in destination.send:
                path = files.get(RESULT_ROLE[role])
                if path is None:
                    continue
                path = Path(path)
                if path not in uids:
                    try:
                        uids[path] = str(dcmread(path, stop_before_pixels=True,
                                                 specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                    except Exception as err:  # noqa: BLE001 - an unreadable result is not sent; say so
                        log.error("result file not delivered (unreadable): key=%s file=%s error=%s", job.key, path,
                                  err)
                        continue
                out.append(DeliveryRequest(destination.name, role, path, uids[path]))
        return out

    def _fail(self, job: SeriesJob, err: Exception, attempt: int, seconds: float, plan: Plan | None) -> str:
        """Record a failed attempt (row, error file, history); ``failed`` when final, else ``retry``."""
        cfg = self.config
        # fails the same way every time: bad input (no retry until the files change), or a device, precision or
        # model the PC or the bundle does not have (every series fails until the configuration is corrected)
        unrunnable = isinstance(err, (ConfigError, BundleError))
        deterministic = job.problem is not None or unrunnable or isinstance(err, (InvalidSeriesError, TimeCeilingError))
        kind = kind_of(err)
        if isinstance(err, EdgesegError):
            log.error("series failed: key=%s kind=%s attempt=%d/%d error=%s", job.key, kind, attempt,
                      cfg.max_attempts, err)
        else:
            log.exception("series failed with an unexpected error: key=%s attempt=%d/%d", job.key, attempt,
                          cfg.max_attempts)
        message = str(err) or type(err).__name__
        self.store.mark_failed(job.key, kind, message, seconds, give_up=deterministic, max_attempts=cfg.max_attempts)
        final = deterministic or attempt >= cfg.max_attempts or self.once
        also = f" Also noted: {' '.join(job.notes)}" if job.notes else ""
        remedy = remedy_for(err, device=cfg.device, folder=job.folder, log_file=cfg.log_file)
        write_error(job.folder, job.name, err, f"{remedy} {self._retry_text(attempt, unrunnable, deterministic)}{also}")
        self.stats["failed"] += 1
        self.history.append(JobRecord(job.key, job.name, False, seconds, None, message, plan, cfg.time_budget_s))
        return "failed" if final else "retry"

    def _retry_text(self, attempt: int, unrunnable: bool, deterministic: bool) -> str:
        """What the error file says about trying again."""
        max_attempts = self.config.max_attempts
        if unrunnable:
            return ("Not retried: every series fails this way until the configuration or the bundle is corrected; "
                    "then restart the watcher and re-copy this series.")
        if deterministic:
            return "The watcher tries again when the files change."
        if attempt >= max_attempts:
            return f"Attempt {attempt} of {max_attempts}: given up. Change or re-copy the series to try again."
        if self.once:
            return f"Attempt {attempt} of {max_attempts}; the next start of the watcher tries again."
        return f"Attempt {attempt} of {max_attempts}; the watcher tries again later by itself."
