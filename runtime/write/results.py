"""Write every requested result role for one series into ``<name>.edgeseg/`` beside it, atomically.

Layout of ``<name>.edgeseg/``::

    seg.nii.gz          multilabel mask, input shape and affine (always)
    seg.labels.json     {"1": "spleen", ...} (always)
    structures/*.nii.gz one 0/1 mask per label (OutputOptions.per_structure)
    statistics.json     voxels, volume_ml, mean_intensity per structure (OutputOptions.statistics)
    preview.png         overlay on 5 slices with a legend (OutputOptions.preview)
    seg.dcm             DICOM-SEG, DICOM input only, when at least one structure is present (OutputOptions.dicom_seg,
                        of type OutputOptions.seg_type)
    sr.dcm              DICOM SR (TID 1500 measurement report: volume, mean intensity per segment of seg.dcm), beside
                        a written seg.dcm only (OutputOptions.dicom_sr)
    manifest.json       the caller's manifest + outputs, status, missing_outputs, series, series_key, writer and
                        time (always)

Results land in the DICOM series' folder (``Volume.source``) or beside the NIfTI/PAR file, unless ``out_parent``
is given. A previous result of the same series (its manifest's ``series_key``) is replaced, one of another series
never (see ``ResultFolder``), and a stale ``<name>.edgeseg-error.json`` is removed once the folder is published.

No silent output failure: the label map, its labels and the manifest are the result; if one of them cannot be
written (disk full, no permission) nothing is published and :class:`OutputError` is raised. An optional output
that was requested but could not be written (highdicom refusing an unusual source, a source without the UIDs a
DICOM-SEG must reference, a preview that fails) does not fail the run: the other results are published, the
manifest's ``status`` is ``partial`` (else ``complete``) and ``missing_outputs`` holds the reason per missing role;
:attr:`SegmentResult.status` / :attr:`SegmentResult.missing_outputs` say the same to the caller (the command line
exits with :data:`~edgeseg.errors.EXIT_PARTIAL`, the watcher records the series as partial with an error file).
A DICOM-SEG is not requested of a mask with no structure in it (a SEG needs a segment): the manifest notes that
under ``warnings``, and the result is complete. The DICOM SR measures the segments of the SEG written beside it:
without a requested SEG it is not requested either; a requested SEG that is missing makes the SR missing too ("needs
the DICOM-SEG, which was not written: <the SEG's reason>"). The SEG's and the SR's UIDs are derived from the input
and the model (:func:`edgeseg.runtime.write.dicomseg.result_uids`): a re-run writes the same ones.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Final, Mapping

import numpy as np

from edgeseg.errors import OutputError
from edgeseg.runtime.naming import series_key
from edgeseg.runtime.options import OutputOptions
from edgeseg.runtime.read.paths import fs_text
from edgeseg.runtime.read.volume import Volume
from edgeseg.runtime.write.atomic import ResultFolder, clear_error_file
from edgeseg.runtime.write.dicomseg import DICOM_SEG_FILE, write_dicom_seg
from edgeseg.runtime.write.manifest import MANIFEST_FILE, write_manifest
from edgeseg.runtime.write.nifti import (LABELMAP_FILE, LABELS_FILE, STRUCTURES_DIR, write_label_sidecar,
                                         write_labelmap, write_structures)
from edgeseg.runtime.write.preview import PREVIEW_FILE, write_preview
from edgeseg.runtime.write.sr import DICOM_SR_FILE, write_dicom_sr
from edgeseg.runtime.write.statistics import STATISTICS_FILE, compute_statistics, summarize_mask, write_statistics

log = logging.getLogger(__name__)

#: ``manifest.json`` ``status``: every requested output was written
COMPLETE: Final = "complete"
#: ``manifest.json`` ``status``: some requested output could not be written (``missing_outputs`` says why)
PARTIAL: Final = "partial"

#: what each optional role is called in messages
ROLE_NAMES: Final = {
    "dicom_seg": f"DICOM-SEG ({DICOM_SEG_FILE})",
    "dicom_sr": f"DICOM SR ({DICOM_SR_FILE})",
    "preview": f"preview ({PREVIEW_FILE})",
    "statistics": f"statistics ({STATISTICS_FILE})",
    "structures": f"per-structure masks ({STRUCTURES_DIR}/)",
}


def describe_missing(missing: Mapping[str, str]) -> str:
    """One sentence naming each missing output and why: ``DICOM-SEG (seg.dcm) not written: <reason>; ...``."""
    return "; ".join(f"{ROLE_NAMES.get(role, role)} not written: {reason}" for role, reason in missing.items())


@dataclass(frozen=True)
class SegmentResult:
    """Where the results landed: ``output_dir`` is the finished ``<name>.edgeseg`` folder beside the series;
    ``files`` maps a role ("labelmap", "labels", "statistics", "preview", "dicom_seg", "dicom_sr", "manifest") to
    its path."""

    output_dir: Path
    files: dict[str, Path]
    manifest: dict[str, Any]
    #: seconds per stage of this run (read, preprocess, compile, infer, postprocess, write), when known
    timings: dict[str, float] | None = None
    #: the mask's statistics (:func:`~edgeseg.runtime.write.statistics.compute_statistics`: voxels, volume_ml,
    #: mean_intensity per structure), whether or not statistics.json was requested; None if they failed
    statistics: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        """:data:`COMPLETE`, or :data:`PARTIAL` when a requested output could not be written."""
        return str(self.manifest.get("status", COMPLETE))

    @property
    def missing_outputs(self) -> dict[str, str]:
        """Role -> why it was not written, for each requested output that is missing (empty when complete)."""
        return {str(k): str(v) for k, v in (self.manifest.get("missing_outputs") or {}).items()}


def _record_write_seconds(record: dict[str, Any], seconds: float, writers: Mapping[str, float],
                          wall_s: float | None = None) -> None:
    """Put the writing stage into the run record's timings (they are made before the outputs are written), each
    writer's seconds as ``run.write_s``, and, with the series' wall time so far, the seconds no stage covers as
    ``other``, so that ``total`` is the wall time. A run past its time budget (``options.time_budget_s``) gets
    ``run.over_budget``: the budget, the seconds and the plan's prediction."""
    run = record.get("run")
    timings = run.get("timings_s") if isinstance(run, dict) else None
    if not isinstance(run, dict) or not isinstance(timings, dict):
        return
    timings = dict(timings, write=round(seconds, 3))
    stages = sum(float(v) for k, v in timings.items() if k not in ("total", "other"))
    if wall_s is not None:
        timings["other"] = round(max(0.0, wall_s - stages), 3)
    timings["total"] = round(stages + float(timings.get("other", 0.0)), 3)
    run = dict(run, timings_s=timings, write_s={role: round(s, 3) for role, s in writers.items()})
    options = record.get("options")
    budget = options.get("time_budget_s") if isinstance(options, Mapping) else None
    if budget is not None and timings["total"] > float(budget):
        plan = record.get("plan")
        run["over_budget"] = {"budget_s": float(budget), "seconds": timings["total"],
                              "predicted_s": plan.get("predicted_s") if isinstance(plan, Mapping) else None}
    record["run"] = run


def series_folder(volume: Volume) -> Path:
    """Where results go by default: the DICOM series' folder, or the folder holding the NIfTI/PAR file."""
    source = Path(volume.source)
    return source if volume.kind == "dicom" and source.is_dir() else source.parent


def _series_record(volume: Volume) -> dict[str, Any]:
    return {
        "kind": volume.kind,
        "name": volume.name,
        "source": str(volume.source),
        "series_uid": volume.series_uid,
        "description": volume.description,
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "affine_ras": np.asarray(volume.affine).round(6).tolist(),
        "n_dicom_files": len(volume.dicom_files),
        "stack": volume.dicom.stack,
        # GE epi_pepolar: the sources store their rows reversed; the NIfTI is upright, the SEG in the stored order
        **({"stored_rows_reversed": True} if volume.dicom.rows_reversed else {}),
    }


def seg_source_problem(volume: Volume) -> str | None:
    """Why no DICOM-SEG can be made for ``volume`` whatever the mask, or None: a SEG references its source
    series, study and every source image by UID, so a source exported without them (a de-identification that
    empties the UIDs) cannot have one."""
    sop_uids = tuple(volume.dicom.sop_instance_uids)
    absent = [what for what, ok in (
        ("SOPInstanceUID", bool(sop_uids) and all(sop_uids)),
        ("SeriesInstanceUID", bool(volume.series_uid)),
        ("StudyInstanceUID", bool(volume.dicom.study_instance_uid)),
    ) if not ok]
    if not absent:
        return None
    return (f"the source images have no {', '.join(absent)} (exported with the UIDs emptied, as some "
            "de-identification tools do), so a DICOM-SEG cannot reference them; the NIfTI results are complete. For "
            "a DICOM-SEG, export the series with its UIDs kept (or replaced, not emptied)")


def write_results(volume: Volume, labelmap: np.ndarray, labels: Mapping[int, str], options: OutputOptions,
                  manifest: Mapping[str, Any], out_parent: Path | None = None,
                  checkpoint: Callable[[str, float], None] | None = None,
                  started: float | None = None) -> SegmentResult:
    """Write the results of one series; returns where they landed.

    ``labelmap``: integer array of exactly ``volume.shape`` (I, J, K), 0 = background, values = keys of
    ``labels``. ``options`` selects the optional roles. ``manifest``: the caller's run record, extended with
    ``outputs`` (role -> file name), ``series``, ``labels_present`` and, for DICOM-SEG, ``dicom_seg_segments``
    (the DICOM SR measures those segments).
    ``checkpoint(stage, fraction)`` is called before each output is written and before publishing (the
    segmenter's time ceiling and stop requests: whatever it raises discards the unpublished folder).
    ``manifest["run"]["timings_s"]``, when present, gets the seconds spent here as ``write`` (and its ``total``),
    ``manifest["run"]["write_s"]`` the seconds of each writer; ``started``: the series' start
    (``time.monotonic()``), when the caller knows it: the timings then get ``other`` (what no stage covers) and
    their ``total`` is the series' wall time up to the manifest. A run past ``manifest["options"]["time_budget_s"]``
    is marked ``run.over_budget``.
    Raises :class:`OutputError` (disk full, no permission) with nothing published; ValueError for a labelmap of
    the wrong shape or type.
    """
    began = time.perf_counter()
    writers: dict[str, float] = {}
    mark = [began]

    def lap(role: str) -> None:
        """The seconds since the previous lap go to writer ``role``."""
        now = time.perf_counter()
        writers[role] = writers.get(role, 0.0) + now - mark[0]
        mark[0] = now

    def step(role: str) -> None:
        lap("other")
        if checkpoint is not None:  # outside ``optional``: what it raises is never a missing output
            checkpoint(f"write {role}", 1.0)
        # each output is a stage of its own in the log (a SEG of a large series takes minutes)
        log.info("series %s: writing %s (%.1f s into writing)", volume.name, ROLE_NAMES.get(role, role),
                 time.perf_counter() - began)

    labelmap = np.asarray(labelmap)
    if tuple(labelmap.shape) != tuple(volume.shape):
        raise ValueError(f"labelmap shape {labelmap.shape} differs from the volume's {volume.shape}: refusing to "
                         "write a mask on another grid")
    if not np.issubdtype(labelmap.dtype, np.integer):
        raise ValueError(f"labelmap must hold integer labels, not {labelmap.dtype}")
    labels = {int(k): str(v) for k, v in labels.items()}
    parent = Path(out_parent) if out_parent is not None else series_folder(volume)
    record = dict(manifest)
    warnings: list[str] = list(record.get("warnings", []))
    outputs: dict[str, str] = {}
    summary = summarize_mask(volume, labelmap, labels)  # the one pass over the mask every writer below shares
    present = summary.present
    lap("mask_summary")

    owner = series_key(volume.kind, os.path.abspath(volume.source), volume.series_id or volume.series_uid,
                       volume.stack)
    record["series_key"] = fs_text(owner)
    missing: dict[str, str] = {}

    def optional(role: str, target: Path, write: Callable[[], Any]) -> Any:
        """Write an optional role; a failure other than the disk's (which fails the whole result) is recorded as
        a missing output and whatever it left is removed."""
        try:
            return write()
        except (OSError, OutputError, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - see the module docstring: recorded, never silent
            log.error("series %s: %s not written (%s: %s)", volume.name, ROLE_NAMES.get(role, role),
                      type(err).__name__, err)
            missing[role] = f"{type(err).__name__}: {err}"
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            return None

    with ResultFolder(parent, volume.name, owner=owner) as folder:
        root = folder.path
        write_labelmap(root / LABELMAP_FILE, labelmap, volume, labels)
        outputs["labelmap"] = LABELMAP_FILE
        write_label_sidecar(root / LABELS_FILE, labels)
        outputs["labels"] = LABELS_FILE
        lap("labelmap")
        if options.per_structure:
            step("structures")
            optional("structures", root / STRUCTURES_DIR,
                     lambda: write_structures(root / STRUCTURES_DIR, labelmap, volume, labels))
            if "structures" not in missing:
                outputs["structures"] = STRUCTURES_DIR
            lap("structures")
        computed: dict[str, Any] = {}

        def statistics() -> dict[str, Any]:
            """The statistics of the mask, computed once for statistics.json, the SR and the caller."""
            if "stats" not in computed:
                computed["stats"] = compute_statistics(volume, labelmap, labels, summary=summary)
            stats: dict[str, Any] = computed["stats"]
            return stats

        if options.statistics:
            step("statistics")
            optional("statistics", root / STATISTICS_FILE, lambda: write_statistics(
                root / STATISTICS_FILE, statistics()))
            if "statistics" not in missing:
                outputs["statistics"] = STATISTICS_FILE
            lap("statistics")
        if options.preview:
            step("preview")
            optional("preview", root / PREVIEW_FILE, lambda: write_preview(root / PREVIEW_FILE, volume, labelmap,
                                                                           labels, summary=summary))
            if "preview" not in missing:
                outputs["preview"] = PREVIEW_FILE
            lap("preview")
        if options.dicom_seg and volume.kind == "dicom":
            unreferencable = seg_source_problem(volume)
            segments: dict[int, dict[str, Any]] | None = None
            if not present:
                warnings.append("no structure found: no DICOM-SEG written")
            elif unreferencable is not None:
                log.warning("series %s: DICOM-SEG not written: %s", volume.name, unreferencable)
                missing["dicom_seg"] = unreferencable
            else:
                step("dicom_seg")
                segments = optional("dicom_seg", root / DICOM_SEG_FILE, lambda: write_dicom_seg(
                    root / DICOM_SEG_FILE, volume, labelmap, labels, segmentation_type=options.seg_type,
                    bundle=record.get("bundle"), run=record.get("run"), summary=summary, warnings=warnings))
                lap("dicom_seg")
                if "dicom_seg" in missing:  # highdicom refuses some sources; the other results are kept
                    warnings.append(f"DICOM-SEG not written: {missing['dicom_seg']}")
                elif segments is not None:
                    outputs["dicom_seg"] = DICOM_SEG_FILE
                    record["dicom_seg_segments"] = {str(n): s for n, s in segments.items()}
            if options.dicom_sr and present:  # the SR measures the SEG's segments: only beside a SEG
                if "dicom_seg" in missing:
                    missing["dicom_sr"] = f"needs the DICOM-SEG, which was not written: {missing['dicom_seg']}"
                    log.warning("series %s: DICOM SR not written: %s", volume.name, missing["dicom_sr"])
                elif segments is not None:
                    seg_segments = segments
                    step("dicom_sr")
                    optional("dicom_sr", root / DICOM_SR_FILE, lambda: write_dicom_sr(
                        root / DICOM_SR_FILE, volume, root / DICOM_SEG_FILE, seg_segments, statistics(),
                        bundle=record.get("bundle"), run=record.get("run"), warnings=warnings))
                    lap("dicom_sr")
                    if "dicom_sr" in missing:
                        warnings.append(f"DICOM SR not written: {missing['dicom_sr']}")
                    else:
                        outputs["dicom_sr"] = DICOM_SR_FILE
        try:  # for the caller (one-shot mode's volumes); the requested outputs that needed it already said so
            stats_of_mask: dict[str, Any] | None = statistics()
        except Exception as err:  # noqa: BLE001 - a statistics failure never fails the published result
            log.warning("statistics of %s not computed: %s: %s", volume.name, type(err).__name__, err)
            stats_of_mask = None
        outputs["manifest"] = MANIFEST_FILE
        record["outputs"] = outputs
        record["status"] = PARTIAL if missing else COMPLETE
        record["missing_outputs"] = missing
        record["series"] = _series_record(volume)
        record["labels_present"] = {str(v): labels.get(v, f"label_{v}") for v in present}
        if warnings:
            record["warnings"] = warnings
        step("manifest")
        now = time.perf_counter()
        wall = None if started is None else time.monotonic() - started
        _record_write_seconds(record, now - began, writers, wall)
        written = write_manifest(root / MANIFEST_FILE, record)
    try:
        clear_error_file(parent, volume.name)
    except OutputError as err:  # the results are published; a stale error file is only a nuisance
        log.warning("%s", err)
    final = folder.final_path
    return SegmentResult(output_dir=final, files={role: final / name for role, name in outputs.items()},
                         manifest=written, statistics=stats_of_mask)
