"""One-shot mode: segment every series found in an input folder once, write the results into an output folder, and
say how it went in one exit status. No watcher, no job store, no network.

Two output layouts:

* ``folders`` (MONAI Deploy, Holoscan, a vendor AI platform, a script): one ``<name>.edgeseg/`` per series in the
  output folder, exactly what ``edgeseg segment`` writes beside a series (NIfTI, DICOM-SEG, SR, statistics,
  preview, manifest), plus ``result.json``;
* ``map`` (a MONAI Application Package run by its host: the folders came from ``HOLOSCAN_*``/``MONAI_*``): as
  ``folders``, but each DICOM result (the DICOM-SEG and, where written, the SR) is moved to the output folder's top
  level as ``<name>_<role>.dcm``, where the MAP contract's next stage (MONAI Deploy's export of the output folder)
  takes it; ``result.json`` says where every output went;
* ``mercure``: only what mercure dispatches and stores (:mod:`edgeseg.runtime.oneshot.mercure`): each DICOM result
  (the DICOM-SEG and, where written, the SR) as ``<SeriesInstanceUID>#<name>_<role>.dcm`` and ``result.json`` with
  ``__mercure_notification``. The full result folders are built in a private temporary folder and removed.

``auto`` picks ``mercure`` when the input holds mercure's ``task.json``, ``map`` when the folders came from a MAP
host's variables, else ``folders``. ``result.json`` is
written in both layouts, also when the run fails: ``status`` (complete, partial, failed), ``exit_code``, per series
its status, volumes per structure (ml), the manifest's essentials (variant, precision per part, seconds, bundle),
the outputs and the reason for anything missing or failed.

Which series are segmented is decided by the selection rules (``selection.*``, :mod:`edgeseg.runtime.read.selection`):
the rest is skipped by rule (``result.json`` ``skipped``, one log line each), which is not a failure.

Exit status (:func:`task_exit_code`), as engines read it: mercure moves a task whose module exits non-zero to its
error folder *as a whole*, good series included, and dispatches nothing. So 0 when at least one series was
segmented (``status`` ``complete``, or ``partial`` when another series was refused or failed or an output is
missing: what was written is delivered, the rest is in ``failed`` and the notification) and when every series was
skipped by a rule (``status`` ``skipped``); the code of the first failure only when nothing was segmented and
something failed (``status`` ``failed``). ``edgeseg segment`` keeps its finer codes (16 partial, 17 some failed).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from edgeseg import __version__
from edgeseg.bundle.schema import Bundle, load_bundle
from edgeseg.errors import EXIT_OK, EdgesegError, exit_code_of, kind_of, remedy_for, summary_exit_code
from edgeseg.runtime.oneshot.engines import Folders
from edgeseg.runtime.oneshot.mercure import (NOTIFICATION_KEY, RESULT_FILE, AnnouncedSeries, MercureTask,
                                             announced_series, dispatch_name, is_mercure_input, model_cache_dir,
                                             notification, persistence_dir, read_task, task_settings_layer)
from edgeseg.runtime.oneshot.settings import check_variant, settings_from
from edgeseg.runtime.options import SegmentOptions
from edgeseg.runtime.read import SeriesRef, SkippedFiles, series_to_segment
from edgeseg.runtime.read.series_ref import Skipped
from edgeseg.runtime.commands import resolve_bundle_path
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.settings.schema import DEMO_BUNDLE_KEYWORD
from edgeseg.runtime.write import COMPLETE, PARTIAL, SegmentResult, describe_missing
from edgeseg.runtime.write.atomic import output_error, write_json_atomic

log = logging.getLogger(__name__)

#: output layouts (:func:`run_oneshot`'s ``layout``)
LAYOUTS = ("auto", "mercure", "map", "folders")
#: the engines (:attr:`Folders.engine`) whose runs get the ``map`` layout by default
MAP_ENGINES = ("MONAI Deploy", "Holoscan")
#: ``result.json`` ``status`` of a run in which no series was segmented
FAILED = "failed"
#: ``result.json`` ``status`` of a run in which every series was skipped by a selection rule (exit 0)
SKIPPED = "skipped"

ProgressCallback = Callable[[str, float], None]


@dataclass
class SeriesOutcome:
    """How one series went. ``outputs``: role -> file written into the output folder (relative to it);
    ``volumes_ml``: structure -> volume of the structures found."""

    name: str
    series_uid: str | None
    description: str
    status: str
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    missing_outputs: dict[str, str] = field(default_factory=dict)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "series_uid": self.series_uid, "description": self.description,
                               "status": self.status, "seconds": round(self.seconds, 2)}
        if self.error is not None:
            out["error"] = {"kind": kind_of(self.error), "message": str(self.error),
                            "what_to_do": remedy_for(self.error)}
            return out
        out.update(outputs=self.outputs, missing_outputs=self.missing_outputs, run=self.run,
                   volumes_ml=self.volumes_ml)
        return out


@dataclass
class OneShotResult:
    """What a run did: its outcome per series, the failures in order (refused images first), the exit status and
    where ``result.json`` went."""

    folders: Folders
    layout: str
    outcomes: list[SeriesOutcome]
    failures: list[BaseException]
    exit_code: int
    result_file: Path | None
    task: MercureTask | None = None

    #: the series (or stacks) the selection rules skipped
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def status(self) -> str:
        return _status(self.exit_code, self.outcomes, self.failures)


def _status(exit_code: int, outcomes: list[SeriesOutcome], failures: list[BaseException] | None = None) -> str:
    """``complete``: every series kept by the selection rules was segmented with every output; ``partial``: some
    were segmented, and something failed or is missing (still exit 0: the task succeeded); ``skipped``: nothing to
    segment, every series was skipped by a rule; ``failed``: nothing was segmented."""
    segmented = any(o.status in (COMPLETE, PARTIAL) for o in outcomes)
    if exit_code != EXIT_OK:
        return PARTIAL if segmented else FAILED
    if failures or any(o.status == PARTIAL for o in outcomes):
        return PARTIAL
    return COMPLETE if segmented else SKIPPED


def task_exit_code(complete: int, partial: int, failures: list[BaseException]) -> int:
    """The exit status of a one-shot task, as engines read it (mercure's ``process_series``: any non-zero status
    moves the *whole* task, good series included, to the error folder and nothing is dispatched). 0 when at least
    one series was segmented (complete or partial: what was written is delivered; what failed is in
    ``result.json``'s ``failed`` and the notification), and when there was nothing to segment because every series
    was skipped by a selection rule; otherwise the code of the first failure (nothing was segmented)."""
    if complete or partial or not failures:
        return EXIT_OK
    return summary_exit_code(complete, partial, failures)


def choose_layout(layout: str, folders: Folders) -> str:
    """``mercure``, ``map`` or ``folders``: ``auto`` is ``mercure`` when the input holds mercure's task.json,
    ``map`` when a MAP host's variables gave the folders."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if layout == "auto":
        if is_mercure_input(folders.input):
            return "mercure"
        return "map" if folders.engine in MAP_ENGINES else "folders"
    return layout


def run_oneshot(folders: Folders, bundle: str | Path | Bundle = DEMO_BUNDLE_KEYWORD,
                overrides: Mapping[str, Any] | None = None, layout: str = "auto", cache_dir: Path | None = None,
                use_cache: bool = True,
                env: Mapping[str, str] | None = None, progress: ProgressCallback | None = None) -> OneShotResult:
    """Segment every series in ``folders.input`` once into ``folders.output`` (module docstring).

    ``overrides``: settings from the command line by key path (``precision``, ``outputs.preview`` ...; None values
    fall through), stronger than mercure's ``process.settings``. ``cache_dir``: the OpenVINO compiled-model cache;
    None: ``<MODULE_PERSISTENCE_DIR>/edgeseg/model_cache`` when mercure offers a persistence folder, else no cache
    (a one-shot run writes nowhere but its output and that folder); ``use_cache=False``: none at all.
    Raises :class:`EdgesegError` for a failure before any series ran (bad settings, bundle, an input without series),
    after writing ``result.json`` saying so; per-series failures are in the result.
    """
    started = time.perf_counter()
    chosen = "folders"
    task: MercureTask | None = None
    skipped = SkippedFiles()
    try:
        chosen = choose_layout(layout, folders)
        layers: list[tuple[Mapping[str, Any], str, str]] = []
        if chosen == "mercure":
            task = read_task(folders.input)
            layers.append(task_settings_layer(task))
        layers.append(({k: v for k, v in (overrides or {}).items() if v is not None}, "command line", ""))
        settings = settings_from(layers, what="module settings" if task else "settings")
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(resolve_bundle_path(bundle))
        check_variant(settings, [v.name for v in bundle.variants])
        if not use_cache:
            cache_dir = None
        elif cache_dir is None:
            cache_dir = model_cache_dir(env)
        options = SegmentOptions(device=settings.device, precision=settings.precision, variant=settings.variant,
                                 threads=settings.threads, cache_dir=cache_dir, time_budget_s=settings.time_budget_s,
                                 outputs=settings.outputs)
        # tile latencies are kept in mercure's persistence folder when there is one (else measured and forgotten)
        keep = persistence_dir(env)
        segmenter = Segmenter(bundle, options, ceiling_s=settings.time_ceiling_s,
                              latency_path=keep / "latency.json" if keep is not None else None)
        refs, refused = series_to_segment(folders.input, selection=settings.selection, skipped=skipped,
                                          fix="Send the DICOM files of an image series (or give a folder holding "
                                              "NIfTI/PAR files).")
    except EdgesegError as err:
        _write_summary(folders, chosen, task, [], [err], exit_code_of(err), None, time.perf_counter() - started)
        raise
    failures: list[BaseException] = list(refused)
    announced = announced_series(folders.input) if chosen == "mercure" else {}
    staging = Path(tempfile.mkdtemp(prefix="edgeseg-run-")) if chosen == "mercure" else None
    outcomes: list[SeriesOutcome] = []
    try:
        for ref in refs:
            tags = announced.get(ref.uid or "") if ref.uid else None
            outcome = _run_series(ref, segmenter, folders, staging, tags, progress, lift=chosen == "map")
            outcomes.append(outcome)
            if outcome.error is not None:
                failures.append(outcome.error)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    complete = sum(o.status == COMPLETE for o in outcomes)
    partial_n = sum(o.status == PARTIAL for o in outcomes)
    code = task_exit_code(complete, partial_n, failures)
    result_file = _write_summary(folders, chosen, task, outcomes, failures, code, bundle,
                                 time.perf_counter() - started, skipped.by_rule)
    return OneShotResult(folders=folders, layout=chosen, outcomes=outcomes, failures=failures, exit_code=code,
                         result_file=result_file, task=task, skipped=list(skipped.by_rule))


def _run_series(ref: SeriesRef, segmenter: Segmenter, folders: Folders, staging: Path | None,
                tags: AnnouncedSeries | None, progress: ProgressCallback | None, lift: bool = False) -> SeriesOutcome:
    description = ref.description or (tags.description if tags else "")
    outcome = SeriesOutcome(name=ref.name, series_uid=ref.uid, description=description, status=FAILED)
    t0 = time.perf_counter()
    try:
        # the segmenter plans against the budget and enforces the time ceiling (writing included)
        result = segmenter.segment(ref, out_parent=staging or folders.output, progress=progress)
        dispatched = _dispatch(result, folders.output) if staging is not None else None
        lifted = _lift_dicom(result, folders.output) if lift else {}
    except EdgesegError as err:
        outcome.error = err
    outcome.seconds = time.perf_counter() - t0
    if outcome.error is not None:
        log.error("series failed: %s: %s", ref.name, outcome.error)
        return outcome
    outcome.status = result.status
    outcome.missing_outputs = result.missing_outputs
    # the volume (ml) of each structure found, from the writer's statistics
    stats = result.statistics or {"structures": {}}
    outcome.volumes_ml = {name: round(float(s["volume_ml"]), 3) for name, s in stats["structures"].items()
                          if s["voxels"]}
    manifest = result.manifest
    outcome.run = {"variant": manifest["run"]["variant"],
                   "parts": [{k: p[k] for k in ("name", "precision", "device", "tiles")}
                             for p in manifest["run"]["parts"]],
                   "timings_s": manifest["run"]["timings_s"]}
    if "plan" in manifest:
        outcome.run["plan"] = {k: manifest["plan"][k] for k in ("variant", "tile_step_size", "predicted_s", "fits")}
    if dispatched is None:
        outcome.outputs = {role: lifted.get(role) or str(path.relative_to(folders.output))
                           for role, path in result.files.items()}
    else:
        outcome.outputs = dispatched
    log.info("series %s: name=%s outputs=%s%s", outcome.status, ref.name, ", ".join(outcome.outputs) or "none",
             f" missing: {describe_missing(outcome.missing_outputs)}" if outcome.missing_outputs else "")
    return outcome


def _dispatch(result: SegmentResult, output: Path) -> dict[str, str]:
    """Copy the result's DICOM files (every role written as ``*.dcm``: the DICOM-SEG, the SR when written) into
    mercure's output folder under :func:`~edgeseg.runtime.oneshot.mercure.dispatch_name`; role -> file name."""
    import pydicom

    out: dict[str, str] = {}
    for role, path in sorted(result.files.items()):
        if path.suffix.lower() != ".dcm" or not path.is_file():
            continue
        try:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                      .get("SeriesInstanceUID", "") or "")
        except Exception:  # noqa: BLE001 - our own file; the name only loses the UID
            uid = ""
        name = dispatch_name(uid, result.output_dir.name.removesuffix(".edgeseg"), role)
        target = output / name
        tmp = output / f".{name}.partial"
        try:
            shutil.copyfile(path, tmp)
            tmp.replace(target)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise output_error(err, output, f"copy {path.name} into") from err
        out[role] = name
    return out


def _lift_dicom(result: SegmentResult, output: Path) -> dict[str, str]:
    """(``map`` layout) Move the result's DICOM files from its ``<name>.edgeseg/`` folder to the top level of the
    output folder as ``<name>_<role>.dcm`` (a rename on the same file system: never seen half-written); role -> file
    name."""
    out: dict[str, str] = {}
    stem = result.output_dir.name.removesuffix(".edgeseg")
    for role, path in sorted(result.files.items()):
        if path.suffix.lower() != ".dcm" or not path.is_file():
            continue
        name = f"{stem}_{role}.dcm"
        try:
            path.replace(output / name)
        except OSError as err:
            raise output_error(err, output, f"move {path.name} into") from err
        out[role] = name
    return out


def _notification_text(outcomes: list[SeriesOutcome], failures: list[BaseException], code: int,
                       skipped: list[Skipped] | None = None) -> str:
    done = [o for o in outcomes if o.status in (COMPLETE, PARTIAL)]
    parts = [f"edgeseg {__version__}: {len(done)} of {len(done) + len(failures)} series segmented"]
    for o in done:
        top = sorted(o.volumes_ml.items(), key=lambda kv: -kv[1])[:3]
        what = ", ".join(f"{name} {ml:.0f} ml" for name, ml in top) or "no structure found"
        label = o.description or o.name
        parts.append(f"{label}: {len(o.volumes_ml)} structures ({what})"
                     + (f"; PARTIAL: {describe_missing(o.missing_outputs)}" if o.missing_outputs else ""))
    for err in failures:
        parts.append(f"failed ({kind_of(err)}): {err}")
    for s in skipped or []:
        parts.append(f"skipped by rule {s.rule}: {s.description or s.series} ({s.reason})")
    if code != EXIT_OK:
        parts.append(f"exit status {code}")
    return "\n".join(parts)


def _write_summary(folders: Folders, layout: str, task: MercureTask | None, outcomes: list[SeriesOutcome],
                   failures: list[BaseException], code: int, bundle: Bundle | None, seconds: float,
                   skipped: list[Skipped] | None = None) -> Path | None:
    """``result.json`` in the output folder (see the module docstring); None when it could not be written (the
    output folder itself is the problem: logged)."""
    outcome_errors = {id(o.error) for o in outcomes if o.error is not None}
    payload: dict[str, Any] = {
        "edgeseg": {"version": __version__, "mode": "run", "layout": layout, "engine": folders.engine},
        "status": _status(code, outcomes, failures),
        "exit_code": code,
        "seconds": round(seconds, 2),
        "input": {"folder": str(folders.input), "from": folders.input_from},
        "bundle": ({"name": bundle.name, "path": str(bundle.path), "intended_use": bundle.intended_use}
                   if bundle is not None else None),
        "series": [o.to_dict() for o in outcomes],
        "failed": [{"kind": kind_of(err), "message": str(err), "what_to_do": remedy_for(err)}
                   for err in failures if id(err) not in outcome_errors],
        "skipped": [s.to_dict() for s in skipped or []],
    }
    if task is not None:
        payload["task"] = {"id": task.id, "uid": task.uid, "uid_type": task.uid_type, "module_name": task.module_name}
    if layout == "mercure":
        payload[NOTIFICATION_KEY] = notification(_notification_text(outcomes, failures, code, skipped or []))
    try:
        return write_json_atomic(folders.output / RESULT_FILE, payload)
    except OSError as err:
        log.error("%s", output_error(err, folders.output, f"write {RESULT_FILE} into"))
        return None


__all__ = ["FAILED", "LAYOUTS", "OneShotResult", "SeriesOutcome", "choose_layout",
           "run_oneshot"]
