"""Time-budget planner: pick the most accurate way to segment a series that is predicted to fit its budget.

Used by ``edgeseg segment --time-budget`` and by the watcher before every series; both give it a bundle (its
own :class:`~edgeseg.bundle.schema.Bundle`, :class:`~edgeseg.bundle.schema.Variant` and
:class:`~edgeseg.bundle.schema.Part`) and the volume's size as a :class:`~edgeseg.runtime.read.SeriesGeometry`
(from the headers in the watcher, from the read volume on the command line).

Prediction, per plan (variant, tile step)::

    seconds = sum over parts (tiles x mirror evaluations x seconds per tile)
              + seconds_per_mvoxel x (input voxels + network-grid voxels of every part) / 1e6
              + seconds_per_instance x DICOM instances          (reading them, and the DICOM-SEG frames written)
              + dicom_result_s                                  (a DICOM series: the SEG's and SR's own costs)
              + compile_s x parts not compiled yet              (a segmenter compiles a part once)
              + fixed_s

* ``seconds per tile`` is measured on this machine (``measure(bundle, part, precision, device, threads)``,
  injected) and cached in a :class:`LatencyTable` (JSON in the state folder) keyed by bundle identity, part,
  precision, device and threads.
* Tiles: the volume's extent in mm is brought to the part's spacing in the network's axis order (after the
  variant's RAS pre-resampling, SimpleITK (z, y, x) order, ``transpose_forward``) and counted with nnU-Net's
  sliding window (:func:`edgeseg.runtime.infer.tiling.tile_count`). Cropping to the body is ignored, so
  predictions are upper bounds.
* The per-voxel and fixed terms start from conservative guesses and are refined from real runs
  (:meth:`LatencyTable.record_run`, an exponential moving average). The per-instance read+write term starts at
  :data:`DEFAULT_SECONDS_PER_INSTANCE` and is learnt the same way from the measured read and write stages of
  DICOM runs (a series of 2000 tiny slices is dominated by reading files and writing the SEG, not by tiles).
* Compilation is predicted only for the parts the segmenter has not compiled yet (``compiled``, the segmenter's:
  a watcher's second series, or one after the tile latency was measured on the kept engine, compiles nothing).
* Once a series has run with this bundle on this PC, the prediction is per stage instead (``details["stages"]``,
  :func:`stage_units`): every stage's fixed seconds plus seconds per unit, a line fitted to the last runs on
  this PC, the recent ones weighing most and each run by its total seconds (:meth:`LatencyTable.record_stages`
  keeps each run's stage timings; :func:`fit_stage`), at the series' units: reading per DICOM instance and per
  input Mvoxel together (a plane through the runs, :func:`fit_stage_joint`: each file's own cost and its pixels'),
  per input Mvoxel for NIfTI/PAR, preprocessing and resampling back per Mvoxel of the network grids and per
  input Mvoxel where the input is resampled, the two fitted apart (normalising and the argmax of the logits
  follow the network grids; a zoom in, the band around the boundaries and a gather back the input; until the runs
  tell them apart an input Mvoxel weighs as :data:`_INPUT_WEIGHTS` says), and, apart from those, per Mvoxel of the
  network grids where no part resamples (a series on the network's spacing: a copy and an argmax), postprocessing per
  Mvoxel, inference per predicted tile-second (the sliding window's own cost on top of the network's is in that
  ratio), writing per input Mvoxel for NIfTI/PAR and, for DICOM, per source plane and per input Mvoxel together
  (the DICOM-SEG's frames and the SR cost per plane, the masks per voxel), compiling per part not compiled yet
  (the last measured seconds per part), and the planner and the rest as fixed seconds. A stage this PC has not
  measured for this kind of input yet (the first DICOM series after NIfTI ones, or the reverse) is predicted
  from the other kind's rates of that stage plus the DICOM-only costs' guesses
  (:data:`DEFAULT_READ_S_PER_INSTANCE`, :data:`DEFAULT_DICOM_RESULT_S`, :data:`DEFAULT_WRITE_S_PER_INSTANCE`);
  likewise preprocessing and resampling back of the first series on the network's own spacing after resampled
  ones (the resampled runs' fixed seconds and grid rate), or of the first resampled series after own-spacing ones
  (their rates plus :data:`DEFAULT_RESAMPLED_S_PER_INPUT_MVOXEL`); compiling at :data:`DEFAULT_COMPILE_S` per part
  until a series has compiled one. The manifest's
  ``plan.details.stages`` beside its ``run.timings_s`` shows where a prediction was off.
* Seconds spent measuring a part's tile latency while planning (a segmenter's first series of that part) are part
  of every plan's prediction (``details["measuring_s"]``), and not of the planning rate learnt from it.
* On a PC with no runs of the bundle, the watcher warms up first (:mod:`edgeseg.runtime.warmup`: the shipped MRI
  as NIfTI and as DICOM, recorded here like any series), so that its first real series is predicted per stage
  from this PC's rates; the guesses serve the first series of a run without it (``edgeseg segment``,
  ``warm_up: false``).
* ``ceiling_s`` (the hard time ceiling per series): a plan whose prediction exceeds it, even the fastest, comes
  back with ``over_ceiling=True`` and the watcher refuses the series before starting it.

Order of preference: lowest variant rank, then smallest tile step (the variant's own, then the coarser steps
0.8 and 1.0). The first plan that fits wins; if none fits the fastest is returned with ``fits=False``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from edgeseg.bundle.schema import Bundle, Part, Variant
from edgeseg.runtime.infer.tiling import tile_count
from edgeseg.runtime.read import SeriesGeometry
from edgeseg.runtime.write.atomic import write_json_atomic

log = logging.getLogger(__name__)

#: tile steps coarser than a part's own that the planner may fall back to (TotalSegmentator uses 0.8 for total_mr)
COARSER_STEPS = (0.8, 1.0)
#: guesses until a run on this machine has been measured: the work around the network per Mvoxel (input plus
#: network grids), a little above the slowest measured (benchmarks/series_scaling.py on the 2-core AMD EPYC
#: machine: TotalSegmentator-sized bundle 0.035-0.26 s, the demo bundle, whose preprocessing and resampling back
#: follow the input's voxels, up to ~0.25 s); 1.5 s dated from the per-class resampling back (146 s for 25 M
#: voxels) and predicted a first 512x512x400 series 5-30x too long, enough to run it in a faster variant it did not
#: need.
DEFAULT_SECONDS_PER_MVOXEL = 0.3
#: a series' own fixed seconds around a compiled network (planning, the manifest, publishing the folder): 0.25-0.3 s
#: for the demo bundle's smallest series on the 2-core AMD EPYC; 3 s including compilation predicted its first
#: series +160 % when the segmenter had compiled it already
DEFAULT_FIXED_S = 0.5
#: compiling one part that the segmenter has not compiled yet, until a series on this PC has measured it
DEFAULT_COMPILE_S = 2.5
#: reading one DICOM instance and writing its share of the DICOM-SEG: 2000 slices of 64 x 64 took 49 s here, of
#: which 5.6 s were tiles and per-voxel work, so about 0.02 s per instance
DEFAULT_SECONDS_PER_INSTANCE = 0.02
#: a DICOM result's costs per series, whatever its planes (the SR, the SEG's header and segment descriptions): 0.37
#: s for the demo bundle, 0.52 s for the TS-sized one on the 2-core AMD EPYC Zen 4 (the DICOM write stage minus the
#: NIfTI one at 20 slices, 2026-12-07; 1.4-1.5 s before the SEG and SR were made faster), half as much again for a
#: slower PC; the first DICOM series of a PC that had only seen NIfTI ones was predicted -46 % without it
DEFAULT_DICOM_RESULT_S = 0.75
#: what a DICOM instance adds to reading the same voxels from NIfTI (opening and parsing the file): 5-6 ms there
DEFAULT_READ_S_PER_INSTANCE = 0.006
#: what a source plane adds to writing a DICOM result beyond the NIfTI outputs (its BINARY SEG frames, one per
#: structure present): 0.005 s for the demo bundle, 0.009 s for the TS-sized one on 320x260 planes, 0.015 s on
#: 512x512 planes (2026-12-07, after the SEG was made faster; 0.02-0.06 s before), a third again for a slower PC
DEFAULT_WRITE_S_PER_INSTANCE = 0.02
#: reading a NIfTI input, or writing the NIfTI outputs, per Mvoxel of the input, while only DICOM runs were seen:
#: 0.010-0.014 s there (512x512x400: read 1.09 s, write 1.30-1.42 s)
DEFAULT_NIFTI_S_PER_MVOXEL = 0.015
_EMA = 0.3

#: the stages of a run (``Timings``) the per-stage prediction covers, in order
STAGES = ("read", "plan", "preprocess", "compile", "infer", "resample", "postprocess", "write", "other")
#: stage rates that follow the last run instead of a moving average: compiling the engines and measuring a tile
#: latency happen for the first series of a segmenter only
_LAST_OBSERVED = ("compile:part", "plan:fixed")
#: runs kept per stage for its fitted line
STAGE_SAMPLES = 12
#: how a joint key is fitted until its runs span a plane (:func:`fit_stage_joint`'s ``fallback``): units of one
#: kind (Mvoxels of two grids) on their sum weighted by :data:`_INPUT_WEIGHTS`, writing a DICOM result with a
#: per-series part; the others ("first") on their first unit
_UNTIL_SPANNED = {"preprocess:grid+input_mvoxel": "sum", "resample:grid+input_mvoxel": "sum",
                  "write:dicom_instance+mvoxel": "half"}
#: what an input Mvoxel costs against a network-grid Mvoxel where the input is resampled, until the runs span a
#: plane (the "sum" fallback's weights): the demo bundle's preprocessing and resampling back fitted on four
#: resampled sizes (2026-12-07, the 2-core AMD EPYC Zen 4): 0.22 and 0.92 s per grid Mvoxel, 0.029 and 0.035 s per
#: input Mvoxel. Series of one spacing (a site's 320x260 series at 1.19 mm) keep the two in one proportion, and one
#: rate for both predicted a 512x512x200 series at 0.5 mm, 40 % of it the input's voxels, +67 % in all (its
#: resampling back at 5.5 s, took 2.2 s); the grid alone would have said 0.8 s.
_INPUT_WEIGHTS = {"preprocess:grid+input_mvoxel": (1.0, 0.13), "resample:grid+input_mvoxel": (1.0, 0.04)}
#: seconds per input Mvoxel that preprocessing and resampling back add, where the input is resampled, to the
#: own-spacing runs' fixed seconds and grid rate, while this PC has run only series on the network's spacing
#: (:func:`_substitute`): the demo bundle's first resampled series (320x260x72 at 1.19 mm, 6 input Mvoxels) took
#: 0.23-0.27 and 0.57 s beyond those rates, 0.04 and 0.095 s per input Mvoxel (2026-12-07, the 2-core AMD EPYC Zen 4)
DEFAULT_RESAMPLED_S_PER_INPUT_MVOXEL = {"preprocess": 0.04, "resample": 0.1}
#: seconds per unit a key is fitted with while its runs are all of one size (:func:`fit_stage`'s ``prior_per_unit``)
_PRIOR_PER_UNIT = {"read:mvoxel": DEFAULT_NIFTI_S_PER_MVOXEL, "write:mvoxel": DEFAULT_NIFTI_S_PER_MVOXEL}
#: units of work of one stage: one amount, or several for a key naming several units (``"read:instance+mvoxel"``)
Units = float | tuple[float, ...]

#: measure(bundle, part, precision, device, threads) -> seconds per tile on this machine
MeasureFn = Callable[[Bundle, Part, str, str, "int | None"], float]


@dataclass(frozen=True)
class Plan:
    """The chosen way to segment one series.

    ``tile_step_size``: None means each part's own step from the bundle; a number overrides the step of every
    part whose own step is finer. ``predicted_s``: None when no latency is known. ``fits``: predicted within
    the budget. ``reason``: one sentence for the log and the store.
    """

    variant: str
    tile_step_size: float | None
    predicted_s: float | None
    fits: bool
    reason: str
    tiles: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    #: predicted above the hard time ceiling even though it is the fastest plan: refuse instead of running it
    over_ceiling: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bundle_identity(bundle: Bundle) -> str:
    """A short, stable identity of a bundle: sha256 over its recorded file hashes."""
    blob = json.dumps(bundle.files, sort_keys=True) + str(bundle.name)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class LatencyTable:
    """Measured seconds per tile and run overheads on this machine, cached as JSON (``path`` None: in memory).

    Thread-safe; saved atomically after every change.
    """

    VERSION = 1

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._tiles: dict[str, dict[str, Any]] = {}
        self._overheads: dict[str, dict[str, Any]] = {}
        if self.path and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("version") == self.VERSION:
                    self._tiles = dict(data.get("tiles", {}))
                    self._overheads = dict(data.get("overheads", {}))
                    for entry in self._overheads.values():  # a table from before the own-spacing keys
                        if isinstance(entry, dict) and entry.get("stage_samples"):
                            entry["stage_samples"] = _on_own_spacing_apart(entry["stage_samples"])
            except (OSError, ValueError, AttributeError) as err:
                log.warning("latency table unreadable, starting empty: path=%s error=%s", self.path, err)

    @staticmethod
    def key(bundle_id: str, part: str, precision: str, device: str, threads: int | None) -> str:
        return f"{bundle_id}|{part}|{precision}|{device}|{threads if threads else 'auto'}"

    @staticmethod
    def overhead_key(bundle_id: str, device: str, threads: int | None) -> str:
        return f"{bundle_id}|{device}|{threads if threads else 'auto'}"

    def __len__(self) -> int:
        return len(self._tiles)

    def get(self, bundle_id: str, part: str, precision: str, device: str, threads: int | None) -> float | None:
        entry = self._tiles.get(self.key(bundle_id, part, precision, device, threads))
        return float(entry["seconds_per_tile"]) if entry else None

    def put(self, bundle_id: str, part: str, precision: str, device: str, threads: int | None,
            seconds_per_tile: float) -> None:
        with self._lock:
            self._tiles[self.key(bundle_id, part, precision, device, threads)] = {
                "seconds_per_tile": float(seconds_per_tile),
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            self._save()

    def overhead(self, bundle_id: str, device: str, threads: int | None) -> tuple[float, float]:
        """(seconds per million voxels, fixed seconds) for pre/post-processing, reading and writing."""
        entry = self._overheads.get(self.overhead_key(bundle_id, device, threads))
        if not entry:
            return DEFAULT_SECONDS_PER_MVOXEL, DEFAULT_FIXED_S
        return float(entry["seconds_per_mvoxel"]), float(entry.get("fixed_s", DEFAULT_FIXED_S))

    def per_instance(self, bundle_id: str, device: str, threads: int | None) -> float:
        """Seconds to read one DICOM instance and write its share of the results (learnt, else the default)."""
        entry = self._overheads.get(self.overhead_key(bundle_id, device, threads)) or {}
        return float(entry.get("seconds_per_instance", DEFAULT_SECONDS_PER_INSTANCE))

    def record_run(self, bundle_id: str, device: str, threads: int | None, mvoxels: float, tile_seconds: float,
                   actual_s: float, instances: int = 0, read_write_s: float | None = None) -> None:
        """Refine the overhead terms from a finished run. With ``instances`` and the measured read+write seconds,
        the per-instance term moves towards ``read_write_s / instances`` (first run: all the way). Then the
        per-voxel and fixed terms are scaled so that, for a volume of this size, they predict the observed time
        beyond the tiles and the per-instance term (an exponential moving average of that scale)."""
        if mvoxels <= 0 or actual_s <= 0:
            return
        per, fixed = self.overhead(bundle_id, device, threads)
        k = self.overhead_key(bundle_id, device, threads)
        entry = self._overheads.get(k, {})
        per_instance = self.per_instance(bundle_id, device, threads)
        rw_runs = int(entry.get("read_write_runs", 0))
        if instances > 0 and read_write_s is not None and read_write_s >= 0:
            observed = read_write_s / instances
            per_instance = observed if rw_runs == 0 else (1 - _EMA) * per_instance + _EMA * observed
            rw_runs += 1
        predicted = fixed + per * mvoxels
        residual = max(0.05, actual_s - tile_seconds - per_instance * instances)
        scale = residual / predicted if predicted > 0 else 1.0
        with self._lock:
            runs = int(entry.get("runs", 0))
            factor = scale if runs == 0 else (1 - _EMA) + _EMA * scale
            self._overheads[k] = {**entry, "seconds_per_mvoxel": per * factor, "fixed_s": fixed * factor,
                                  "runs": runs + 1, "seconds_per_instance": per_instance, "read_write_runs": rw_runs}
            self._save()

    def stage_rates(self, bundle_id: str, device: str, threads: int | None) -> dict[str, tuple[float, ...]]:
        """(fixed seconds, seconds per unit, ...) of each stage (:func:`stage_units`' keys), fitted to the runs on
        this PC (:func:`fit_stage`; :func:`fit_stage_joint` for a key with several units); empty before the first
        run that reported its stages."""
        entry = self._overheads.get(self.overhead_key(bundle_id, device, threads)) or {}
        samples = entry.get("stage_samples") or {}
        rates: dict[str, tuple[float, ...]] = {}
        rows_of: dict[str, list[tuple[float, ...]]] = {}
        for k, v in samples.items():
            n_units = units_of_key(k)
            rows = [tuple(float(x) for x in sample) for sample in v if len(sample) >= n_units + 1]
            if not rows:
                continue
            rows_of[k] = rows
            rates[k] = (fit_stage_joint(rows, n_units, _UNTIL_SPANNED.get(k, "first"), _INPUT_WEIGHTS.get(k))
                        if n_units > 1 else
                        fit_stage(rows, last_only=k in _LAST_OBSERVED, proportional=k == "infer:tile_s",
                                  prior_per_unit=_PRIOR_PER_UNIT.get(k)))
        dicom_write, nifti_write = "write:dicom_instance+mvoxel", "write:mvoxel"
        if dicom_write in rows_of and nifti_write in rates and rates[nifti_write][1] > 0:
            rates[dicom_write] = dicom_write_rates(rows_of[dicom_write], rates[nifti_write][1])
        return rates

    def record_stages(self, bundle_id: str, device: str, threads: int | None, units: dict[str, Units],
                      stages: dict[str, float]) -> None:
        """Keep a finished run's (units, seconds, the run's total seconds) per stage: ``units``
        (:func:`stage_units` of the plan it followed) and ``stages`` (its measured seconds per stage, the manifest's
        ``timings_s``); the last :data:`STAGE_SAMPLES` runs per stage are kept."""
        k = self.overhead_key(bundle_id, device, threads)
        total = sum(max(0.0, float(v)) for key, v in stages.items() if key in STAGES)
        with self._lock:
            entry = dict(self._overheads.get(k, {}))
            samples = {key: list(v) for key, v in (entry.get("stage_samples") or {}).items()}
            for rate_key, amount in units.items():
                stage = rate_key.split(":", 1)[0]
                amounts = _amounts(amount)
                if stage not in stages or max(amounts) <= 0:
                    continue
                kept = samples.setdefault(rate_key, [])
                kept.append([*(round(a, 6) for a in amounts), round(max(0.0, float(stages[stage])), 4),
                             round(total, 4)])
                del kept[:-STAGE_SAMPLES]
            entry["stage_samples"] = samples
            entry.setdefault("seconds_per_mvoxel", DEFAULT_SECONDS_PER_MVOXEL)
            entry.setdefault("fixed_s", DEFAULT_FIXED_S)
            self._overheads[k] = entry
            self._save()

    def has_runs(self, bundle_id: str, device: str, threads: int | None) -> bool:
        """Whether a series of this bundle has run on this PC with this device and threads (its stages kept)."""
        entry = self._overheads.get(self.overhead_key(bundle_id, device, threads)) or {}
        return bool(entry.get("stage_samples"))

    def get_or_measure(self, bundle: Bundle, part: Part, precision: str, device: str, threads: int | None,
                       measure: MeasureFn | None) -> float | None:
        """The cached latency, or measure it now (and cache it) when ``measure`` is given."""
        bid = bundle_identity(bundle)
        got = self.get(bid, part.name, precision, device, threads)
        if got is not None or measure is None:
            return got
        log.info("measuring tile latency: part=%s precision=%s device=%s threads=%s", part.name, precision, device,
                 threads)
        t0 = time.perf_counter()
        seconds = float(measure(bundle, part, precision, device, threads))
        log.info("tile latency measured: part=%s seconds_per_tile=%.3f (took %.1f s)", part.name, seconds,
                 time.perf_counter() - t0)
        self.put(bid, part.name, precision, device, threads, seconds)
        return seconds

    def _save(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": self.VERSION, "tiles": self._tiles, "overheads": self._overheads}
        write_json_atomic(self.path, data, indent=2, sort_keys=True)


# --------------------------------------------------------------------------------------------------------------
# geometry


def network_shape(geometry: SeriesGeometry, variant: Variant, part: Part) -> tuple[int, int, int]:
    """Shape of the volume on the part's grid, in the network's axis order."""
    extent_voxel = [n * s for n, s in zip(geometry.shape, geometry.spacing)]  # mm along voxel axes i, j, k
    if variant.reorient == "RAS":
        world = [0.0, 0.0, 0.0]  # mm along x, y, z
        for axis, mm in zip(geometry.world_axes, extent_voxel):
            world[axis] = mm
        sitk_extent = [world[2], world[1], world[0]]  # SimpleITK array order of the RAS image: (z, y, x)
    else:
        sitk_extent = [extent_voxel[2], extent_voxel[1], extent_voxel[0]]  # array as stored, (k, j, i)
    tf = tuple(part.transpose_forward)
    net_extent = [sitk_extent[a] for a in tf]
    shape = [max(1, int(round(mm / sp))) for mm, sp in zip(net_extent, part.spacing)]
    return (shape[0], shape[1], shape[2])


def _resamples(geometry: SeriesGeometry, variant: Variant, part: Part) -> bool:
    """Whether the part's preprocessing resamples the input (nnU-Net's new shape differs from the input's; the
    crop to the body is ignored, as everywhere here)."""
    spacing = [float(s) for s in geometry.spacing]
    if variant.reorient == "RAS":  # the same spacing per patient axis; which voxel axis carries it does not matter
        world = [0.0, 0.0, 0.0]
        for axis, sp in zip(geometry.world_axes, spacing):
            world[axis] = sp
        spacing = world
        shape_world = [0, 0, 0]
        for axis, n in zip(geometry.world_axes, geometry.shape):
            shape_world[axis] = int(n)
        pairs = list(zip(shape_world[::-1], spacing[::-1]))
    else:
        pairs = list(zip([int(n) for n in geometry.shape][::-1], spacing[::-1]))
    pairs = [pairs[a] for a in part.transpose_forward]
    return any(int(round(sp / float(target) * n)) != n for (n, sp), target in zip(pairs, part.spacing))


def part_tiles(geometry: SeriesGeometry, variant: Variant, part: Part, step: float) -> int:
    """Network evaluations for one part: sliding-window tiles times mirror evaluations."""
    tiles = tile_count(network_shape(geometry, variant, part), tuple(part.patch_size), step)
    mirrors = 2 ** len(part.mirror_axes) if part.use_mirroring else 1
    return int(tiles) * mirrors


def _candidate_steps(variant: Variant, coarser: Iterable[float]) -> list[float | None]:
    own = [float(p.tile_step_size) for p in variant.parts]
    out: list[float | None] = [None]
    out.extend(s for s in sorted(set(coarser)) if s > min(own) + 1e-9)
    return out


def _effective_step(part: Part, override: float | None) -> float:
    return float(part.tile_step_size) if override is None else max(float(part.tile_step_size), override)


def _on_own_spacing_apart(samples: dict[str, list[list[float]]]) -> dict[str, list[list[float]]]:
    """Stage samples with the runs on the network's own spacing that a table written before they had their own
    keys kept under ``preprocess:``/``resample:grid+input_mvoxel`` (0 input Mvoxels) moved to the ``grid_mvoxel``
    keys, ahead of the runs recorded there since (the last :data:`STAGE_SAMPLES` kept). Applied once, as
    :class:`LatencyTable` loads the table: the next runs are recorded in, and saved with, the moved table, so they do
    not push those runs out of the resampled key's."""
    out = dict(samples)
    for stage in ("preprocess", "resample"):
        joint = f"{stage}:grid+input_mvoxel"
        own = [row for row in out.get(joint, []) if len(row) >= 3 and float(row[1]) == 0.0]
        if own:
            out[joint] = [row for row in out[joint] if not (len(row) >= 3 and float(row[1]) == 0.0)]
            moved = [[row[0], *row[2:]] for row in own] + out.get(f"{stage}:grid_mvoxel", [])
            out[f"{stage}:grid_mvoxel"] = moved[-STAGE_SAMPLES:]
    return out


def units_of_key(key: str) -> int:
    """How many units a rate key names (``"write:dicom_instance+mvoxel"``: 2)."""
    return key.split(":", 1)[-1].count("+") + 1


def _amounts(amount: Any) -> tuple[float, ...]:
    return tuple(float(a) for a in amount) if isinstance(amount, (tuple, list)) else (float(amount),)


def stage_units(details: dict[str, Any], dicom: bool) -> dict[str, Units]:
    """Rate key -> units of work of one plan (its :func:`predict` details): ``read:instance+mvoxel`` (DICOM:
    instances and input Mvoxels, each file's own cost and its pixels') or ``read:mvoxel`` (input Mvoxels),
    ``preprocess:``/``resample:grid+input_mvoxel`` (the network grids' Mvoxels and the input's, where a part
    resamples the input, ``details["resampled"]``) or ``preprocess:``/``resample:grid_mvoxel`` (the network grids'
    Mvoxels, where none does), ``postprocess:mvoxel`` (input plus network Mvoxels),
    ``infer:tile_s`` (the tile-seconds predicted from the measured tile latencies),
    ``write:dicom_instance+mvoxel`` (DICOM: the SEG's and SR's costs per source plane, i.e. per frame of each
    segment, and the masks' per voxel) or ``write:mvoxel`` (input Mvoxels), ``compile:part`` (the parts not
    compiled yet, ``details["uncompiled_parts"]``) and one fixed unit of ``plan`` and ``other``."""
    instances = int(details.get("instances", 0) or 0)
    input_mv = float(details.get("input_mvoxels", 0.0) or 0.0)
    all_mv = float(details.get("mvoxels", 0.0) or 0.0)
    # preprocessing and resampling back cost per voxel of the network grids (normalising, the argmax of the
    # fp16 logits) and, where the input is resampled, per input voxel too (a zoom, the band around the labels'
    # boundaries, a gather back), fitted apart; on the network's own spacing they are other work (a copy, an
    # argmax: the demo bundle's resampling back 0.26 s per grid Mvoxel there, 0.92 where it resamples), own keys
    grid = max(0.0, all_mv - input_mv)
    grids: tuple[str, Units] = (("grid+input_mvoxel", (grid, input_mv)) if bool(details.get("resampled", True)) else
                                ("grid_mvoxel", grid))
    per_file = dicom and instances > 0
    units: dict[str, Units] = {
        "read:instance+mvoxel" if per_file else "read:mvoxel": (float(instances), input_mv) if per_file else input_mv,
        "plan:fixed": 1.0, f"preprocess:{grids[0]}": grids[1],
        "compile:part": float(details.get("uncompiled_parts", 1)),
        "infer:tile_s": float(details.get("tile_seconds", 0.0) or 0.0), f"resample:{grids[0]}": grids[1],
        "postprocess:mvoxel": all_mv,
        "write:dicom_instance+mvoxel" if per_file else "write:mvoxel": (float(instances), input_mv) if per_file
        else input_mv,
        "other:fixed": 1.0}
    return units


def fit_stage(samples: list[tuple[float, ...]], last_only: bool = False,
              proportional: bool = False, prior_per_unit: float | None = None) -> tuple[float, float]:
    """(fixed seconds, seconds per unit) of one stage from its runs' (units, seconds[, the run's total seconds]),
    oldest first: a weighted least-squares line through them once they cover two sizes (both terms kept
    non-negative), else seconds proportional to the units (one size seen). Each run weighs by the inverse of its
    total seconds (what a prediction is judged by is its error relative to the run's wall time: a stage's error
    counts as much as it moves the total, so a big series does not drown the small ones, and a stage that is
    near zero on a small series cannot pin the line through that point) and by its recency (x0.8 per newer run:
    the load of a shared PC changes, the last runs tell the present best); a sample without its total (older
    tables) weighs by its own seconds. ``last_only``: the last run's seconds per unit (compiling a part, measuring
    a latency: paid by a segmenter's first series only, and only by a series that does it). ``proportional``: a
    line through zero (inference: its seconds per predicted tile-second). ``prior_per_unit``: from one size, these
    seconds per unit (at most all of the seconds) and the rest fixed, instead of all of it per unit (reading and
    writing NIfTI, :data:`_PRIOR_PER_UNIT`: a 20-slice series' write, 0.06 s, is mostly its fixed part, the
    manifest, statistics and preview; all of it per voxel predicted 1.6 s for a 72-slice series that took 0.14 s)."""
    if last_only:
        units, seconds = samples[-1][0], samples[-1][1]
        return 0.0, seconds / units if units > 0 else 0.0
    x = np.array([s[0] for s in samples])
    y = np.array([s[1] for s in samples])
    scale = np.array([s[2] if len(s) > 2 else s[1] for s in samples])
    w = 0.8 ** np.arange(len(samples) - 1, -1, -1) / np.maximum(scale, 1e-3)  # 1/sigma per run
    w2 = w * w
    one_size = np.ptp(x) <= 1e-9 * max(1.0, float(x.max()))
    if one_size and prior_per_unit is not None and not proportional and float(x[-1]) > 0:
        per = min(prior_per_unit, float(y[-1] / x[-1]))
        return float(y[-1]) - per * float(x[-1]), per
    if proportional or one_size:
        return 0.0, float(np.dot(w2 * x, y) / np.dot(w2 * x, x))
    per, fixed = np.polyfit(x, y, 1, w=w)
    if per < 0:
        return float(np.dot(w2, y) / w2.sum()), 0.0
    if fixed < 0:
        return 0.0, float(np.dot(w2 * x, y) / np.dot(w2 * x, x))
    return float(fixed), float(per)


def fit_stage_joint(samples: list[tuple[float, ...]], n_units: int, fallback: str = "first",
                    weights: tuple[float, ...] | None = None) -> tuple[float, ...]:
    """(fixed seconds, seconds per each unit) of a stage whose cost has several causes (a DICOM series' files and
    its voxels), from its runs' (units..., seconds, the run's total seconds), oldest first, weighted as
    :func:`fit_stage`: a non-negative least-squares plane once the runs span it (as many different sizes as
    terms, not all of one shape), else by ``fallback``: "first": :func:`fit_stage` on the first unit alone (a
    DICOM series' files); "half": the same, except that from a single size half its seconds are fixed and half per
    file (writing a DICOM result has a per-series part, the SR and the SEG's header, that one series cannot tell
    from its per-plane part; all of it per file made a 20-slice series' SR cost 15x in a 300-slice one); "sum"
    (units of one kind): one line through their sum weighted by ``weights`` (what a unit costs
    against the first; all 1 if not given), each unit at that rate times its weight, and from one size in
    proportion to that sum."""
    x = np.array([s[:n_units] for s in samples], dtype=float)
    y = np.array([s[n_units] for s in samples], dtype=float)
    scale = np.array([s[n_units + 1] if len(s) > n_units + 1 else s[n_units] for s in samples], dtype=float)
    w = 0.8 ** np.arange(len(samples) - 1, -1, -1) / np.maximum(scale, 1e-3)
    design = np.column_stack([np.ones(len(samples)), x])
    norm = np.maximum(np.abs(design).max(axis=0), 1e-12)  # columns of one magnitude for the rank and the solver
    if np.linalg.matrix_rank(design / norm, tol=1e-6) < n_units + 1:
        sizes = len({tuple(row) for row in x.round(9).tolist()})
        if fallback == "sum":
            unit_weights = np.asarray(weights if weights is not None else (1.0,) * n_units, dtype=float)
            fixed, per = fit_stage([(float(a @ unit_weights), float(b), float(c)) for a, b, c in zip(x, y, scale)])
            return (fixed, *(per * float(u) for u in unit_weights))
        if fallback == "half" and sizes == 1 and x[-1, 0] > 0:
            return (float(y[-1]) / 2, float(y[-1]) / 2 / float(x[-1, 0]), *([0.0] * (n_units - 1)))
        fixed, per = fit_stage([(float(a[0]), float(b), float(c)) for a, b, c in zip(x, y, scale)])
        return (fixed, per, *([0.0] * (n_units - 1)))
    coef = _nonnegative_lstsq(design / norm * w[:, None], y * w)
    return tuple(float(c) for c in coef / norm)


def dicom_write_rates(samples: list[tuple[float, ...]], per_mvoxel: float) -> tuple[float, float, float]:
    """(fixed seconds, seconds per source instance, ``per_mvoxel``) of writing a DICOM series' results, from its
    runs' (instances, input Mvoxels, seconds, total) and the NIfTI outputs' seconds per Mvoxel on this PC (a DICOM
    series gets them too). Fitted jointly, instances and Mvoxels grow together on one scanner's series and the
    plane was steered by the plane size: three 320x260 series put the DICOM-SEG's cost on the voxels and predicted
    a 512x512x200 series' write at 7.7 s that took 3.4 s (its frames, what a SEG costs, follow the planes and the
    structures on them). The voxels are priced at the NIfTI rate; the rest is fitted on the instances
    (:func:`fit_stage_joint`, from one size half of it fixed)."""
    rest = [(s[0], max(0.0, s[2] - per_mvoxel * s[1]), *s[3:]) for s in samples]
    fixed, per_instance = fit_stage_joint(rest, 1, "half")
    return fixed, per_instance, per_mvoxel


def _nonnegative_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||a x - b|| over x >= 0 for a handful of columns: the best least-squares solution over every subset
    of columns whose own solution is non-negative (the optimum is one of them; 2^n small solves)."""
    n = a.shape[1]
    best, best_err = np.zeros(n), float(np.dot(b, b))
    for mask in range(1, 2 ** n):
        cols = [c for c in range(n) if mask >> c & 1]
        sol = np.linalg.lstsq(a[:, cols], b, rcond=None)[0]
        if (sol < 0).any():
            continue
        err = float(np.sum((a[:, cols] @ sol - b) ** 2))
        if err < best_err:
            best, best_err = np.zeros(n), err
            best[cols] = sol
    return best


def _substitute(key: str, rates: dict[str, tuple[float, ...]]) -> tuple[float, ...] | None:
    """Rates for a key this PC has no runs of, from what it has: inference at the tile-seconds themselves,
    compiling at :data:`DEFAULT_COMPILE_S` per part, preprocessing and resampling back on the network's spacing at
    the resampled runs' fixed seconds and grid rate (more than the own-spacing work costs), where the input is
    resampled at the own-spacing runs' rates plus :data:`DEFAULT_RESAMPLED_S_PER_INPUT_MVOXEL` per input Mvoxel,
    reading and writing one kind of input from the other kind's rates of that stage (the voxels cost the same)
    plus the DICOM-only guesses (the files, the SEG's frames and the per-series SEG and SR); None where nothing
    stands in (the planner's overhead model then)."""
    if key == "infer:tile_s":
        return 0.0, 1.0
    if key == "compile:part":
        return 0.0, DEFAULT_COMPILE_S
    stage, units = key.split(":", 1)
    if units == "grid_mvoxel" and f"{stage}:grid+input_mvoxel" in rates:
        return rates[f"{stage}:grid+input_mvoxel"][:2]  # the resampled work's fixed seconds and grid rate: more
    per_input = DEFAULT_RESAMPLED_S_PER_INPUT_MVOXEL.get(stage)
    if units == "grid+input_mvoxel" and f"{stage}:grid_mvoxel" in rates and per_input is not None:
        return (*rates[f"{stage}:grid_mvoxel"], per_input)
    other = {"read:instance+mvoxel": "read:mvoxel", "read:mvoxel": "read:instance+mvoxel",
             "write:dicom_instance+mvoxel": "write:mvoxel", "write:mvoxel": "write:dicom_instance+mvoxel"}.get(key)
    if other is None or other not in rates:
        return None
    known = rates[other]
    if key == "read:instance+mvoxel":
        return known[0], DEFAULT_READ_S_PER_INSTANCE, known[1]
    if key == "write:dicom_instance+mvoxel":
        return known[0] + DEFAULT_DICOM_RESULT_S, DEFAULT_WRITE_S_PER_INSTANCE, known[1]
    # NIfTI from DICOM runs: their per-voxel rate (none while the DICOM fit is per file only: the guess)
    per_mvoxel = known[2] if known[2] > 0 else DEFAULT_NIFTI_S_PER_MVOXEL
    return (0.0 if key == "write:mvoxel" else known[0]), per_mvoxel


def predict_stages(details: dict[str, Any], rates: dict[str, tuple[float, ...]]) -> dict[str, float] | None:
    """Predicted seconds per stage from the fitted ``rates`` (:meth:`LatencyTable.stage_rates`), a stage this PC
    has no runs of standing in as :func:`_substitute` says, or None while one needed has no stand-in."""
    out: dict[str, float] = {}
    for key, amount in stage_units(details, int(details.get("instances", 0) or 0) > 0).items():
        stage = key.split(":", 1)[0]
        got = rates.get(key) or _substitute(key, rates)
        if got is None:
            return None
        fixed, *pers = got
        out[stage] = out.get(stage, 0.0) + fixed + sum(p * a for p, a in zip(pers, _amounts(amount), strict=True))
    return out


# --------------------------------------------------------------------------------------------------------------
# planning

#: latency(part) -> seconds per tile, or None when unknown
LatencyFn = Callable[[Part], "float | None"]
#: compiled(part) -> whether the segmenter has the part compiled already (None: assumed compiled)
CompiledFn = Callable[[Part], bool]


def predict(geometry: SeriesGeometry, variant: Variant, step: float | None, latency: LatencyFn,
            overhead: tuple[float, float], instances: int = 0,
            per_instance: float = DEFAULT_SECONDS_PER_INSTANCE,
            rates: dict[str, tuple[float, ...]] | None = None,
            compiled: CompiledFn | None = None) -> tuple[float | None, int, dict[str, Any]]:
    """(predicted seconds or None, total network evaluations, per-part details) of one plan. ``instances``: DICOM
    files to read (0 for NIfTI/PAR, whose reading is per voxel). ``rates``: the stage rates learnt on this PC
    (:meth:`LatencyTable.stage_rates`): when they cover every stage the prediction is their sum
    (``details["stages"]``), else the overhead model of the module docstring; either way ``details["compile_s"]``
    is what it counts for compiling. ``compiled``: which parts the segmenter has compiled already (None: all of
    them)."""
    per_mvoxel, fixed = overhead
    total_tiles = 0
    tile_seconds = 0.0
    voxels = float(geometry.voxels)
    unknown = []
    details: dict[str, Any] = {}
    resampled = variant.pre_resample is not None
    for part in variant.parts:
        eff = _effective_step(part, step)
        n = part_tiles(geometry, variant, part, eff)
        shape = network_shape(geometry, variant, part)
        resampled = resampled or _resamples(geometry, variant, part)
        voxels += shape[0] * shape[1] * shape[2]
        total_tiles += n
        lat = latency(part)
        details[part.name] = {"tiles": n, "step": eff, "shape": list(shape), "seconds_per_tile": lat}
        if lat is None:
            unknown.append(part.name)
        else:
            tile_seconds += n * lat
    details["tile_seconds"] = tile_seconds
    details["mvoxels"] = voxels / 1e6
    details["input_mvoxels"] = float(geometry.voxels) / 1e6
    details["resampled"] = resampled
    details["instances"] = int(instances)
    details["read_write_s"] = per_instance * instances
    details["uncompiled_parts"] = 0 if compiled is None else sum(1 for p in variant.parts if not compiled(p))
    if unknown:
        return None, total_tiles, details
    stages = predict_stages(details, rates) if rates else None
    if stages is not None:
        details["stages"] = {k: round(v, 3) for k, v in stages.items()}
        details["compile_s"] = stages.get("compile", 0.0)
        return sum(stages.values()), total_tiles, details
    dicom_result = DEFAULT_DICOM_RESULT_S if instances > 0 else 0.0
    details["compile_s"] = DEFAULT_COMPILE_S * details["uncompiled_parts"]
    return (tile_seconds + per_mvoxel * voxels / 1e6 + per_instance * instances + dicom_result + fixed
            + details["compile_s"], total_tiles, details)


def plan_series(
    bundle: Bundle,
    geometry: SeriesGeometry | None,
    budget_s: float | None,
    latency: LatencyFn,
    overhead: tuple[float, float] = (DEFAULT_SECONDS_PER_MVOXEL, DEFAULT_FIXED_S),
    coarser_steps: Iterable[float] = COARSER_STEPS,
    instances: int = 0,
    per_instance: float = DEFAULT_SECONDS_PER_INSTANCE,
    ceiling_s: float | None = None,
    rates: dict[str, tuple[float, ...]] | None = None,
    compiled: CompiledFn | None = None,
    measuring: Callable[[], float] | None = None,
) -> Plan:
    """The most accurate plan predicted to fit ``budget_s``, else the fastest (``fits=False``; ``over_ceiling``
    when even that is predicted above ``ceiling_s``). Without a budget but with a ceiling, the ceiling is the
    budget (a plan that cannot finish within it would be cancelled anyway).

    ``latency(part)`` returns seconds per tile for a part, or None when unknown. ``instances``: DICOM files of
    the series, each costing ``per_instance`` seconds of reading and writing. ``compiled(part)``: whether the
    segmenter has the part compiled; ``measuring()``: the seconds this planning has spent measuring latencies so
    far (the series has spent them already, whichever plan it runs).
    """
    variants = sorted(bundle.variants, key=lambda v: (v.rank, v.name))
    best = variants[0]
    if budget_s is None and ceiling_s is None:
        return Plan(best.name, None, None, True, "no time budget: the most accurate variant")
    if geometry is None:
        return Plan(best.name, None, None, False, "volume size unknown from the headers: the most accurate variant, "
                    "unplanned")
    limit_name = "budget" if budget_s is not None else "time ceiling"
    if budget_s is None:
        budget_s = ceiling_s
    assert budget_s is not None
    candidates: list[Plan] = []
    for variant in variants:
        for step in _candidate_steps(variant, coarser_steps):
            seconds, tiles, details = predict(geometry, variant, step, latency, overhead, instances, per_instance,
                                              rates, compiled)
            if seconds is None:
                missing = [k for k, v in details.items() if isinstance(v, dict) and v.get("seconds_per_tile") is None]
                return Plan(best.name, None, None, False,
                            f"no tile latency measured for part(s) {', '.join(missing)} of variant {variant.name}: "
                            "the most accurate variant, unplanned", tiles, details)
            seconds = _with_measuring(seconds, details, measuring() if measuring is not None else 0.0)
            plan = Plan(variant.name, step, seconds, seconds <= budget_s, "", tiles, details)
            if plan.fits:
                what = "its own tile step" if step is None else f"tile step {step:g}"
                first = not candidates
                reason = (f"most accurate plan fits: variant {variant.name} with {what}, predicted {seconds:.0f} s "
                          f"of {budget_s:.0f} s" if first else
                          f"variant {variant.name} with {what} is the most accurate plan that fits: predicted "
                          f"{seconds:.0f} s of {budget_s:.0f} s")
                return Plan(variant.name, step, seconds, True, reason, tiles, details)
            candidates.append(plan)
    fastest = min(candidates, key=lambda p: (p.predicted_s or math.inf, p.tiles))
    what = "its own tile step" if fastest.tile_step_size is None else f"tile step {fastest.tile_step_size:g}"
    over = ceiling_s is not None and fastest.predicted_s is not None and fastest.predicted_s > ceiling_s
    if over:
        reason = (f"even the fastest plan (variant {fastest.variant} with {what}) is predicted at "
                  f"{fastest.predicted_s:.0f} s, above the {ceiling_s:.0f} s time ceiling: refused")
    else:
        reason = (f"no plan fits the {budget_s:.0f} s {limit_name}; running the fastest (variant {fastest.variant} "
                  f"with {what}, predicted {fastest.predicted_s:.0f} s)")
    return Plan(fastest.variant, fastest.tile_step_size, fastest.predicted_s, False, reason, fastest.tiles,
                fastest.details, over_ceiling=over)


def _with_measuring(seconds: float, details: dict[str, Any], measuring_s: float) -> float:
    """A plan's prediction with the seconds its planning spent measuring tile latencies (``details``:
    ``measuring_s``, and the plan stage's share where it is predicted per stage): spent by the series already,
    whichever plan it runs."""
    measuring_s = round(measuring_s, 3) if measuring_s >= 0.001 else 0.0
    details["measuring_s"] = measuring_s
    if measuring_s and "stages" in details:
        details["stages"]["plan"] = round(details["stages"].get("plan", 0.0) + measuring_s, 3)
    return seconds + measuring_s


class Planner:
    """Plans series for one bundle on one device with a latency table (and optionally measures missing entries)."""

    def __init__(self, bundle: Bundle, table: LatencyTable, device: str, precision: str, threads: int | None,
                 measure: MeasureFn | None = None, coarser_steps: Iterable[float] = COARSER_STEPS,
                 compiled: CompiledFn | None = None) -> None:
        self.bundle = bundle
        self.table = table
        self.device = device
        self.precision = precision
        self.threads = threads
        self.measure = measure
        self.coarser_steps = tuple(coarser_steps)
        self.compiled = compiled
        self.bundle_id = bundle_identity(bundle)
        self._measuring_s = 0.0  # seconds the plan being made has spent measuring tile latencies

    def latency(self, part: Part) -> float | None:
        try:
            return self.table.get_or_measure(self.bundle, part, self.precision, self.device, self.threads,
                                             self._timed_measure if self.measure is not None else None)
        except Exception as err:  # noqa: BLE001 - a failed measurement must not stop segmentation
            log.warning("tile latency measurement failed, planning without it: part=%s error=%s", part.name, err)
            self.measure = None
            return None

    def _timed_measure(self, bundle: Bundle, part: Part, precision: str, device: str, threads: int | None) -> float:
        """``measure``, its seconds added to the plan being made (:meth:`plan`)."""
        assert self.measure is not None
        t0 = time.perf_counter()
        try:
            return self.measure(bundle, part, precision, device, threads)
        finally:
            self._measuring_s += time.perf_counter() - t0

    def has_runs(self) -> bool:
        """Whether this PC has run a series of the bundle with this device and threads (:mod:`~edgeseg.runtime.
        warmup` measures with two recorded series when not)."""
        return self.table.has_runs(self.bundle_id, self.device, self.threads)

    def plan(self, geometry: SeriesGeometry | None, budget_s: float | None, instances: int = 0,
             ceiling_s: float | None = None) -> Plan:
        self._measuring_s = 0.0
        return plan_series(self.bundle, geometry, budget_s, self.latency,
                           self.table.overhead(self.bundle_id, self.device, self.threads), self.coarser_steps,
                           instances, self.table.per_instance(self.bundle_id, self.device, self.threads), ceiling_s,
                           self.table.stage_rates(self.bundle_id, self.device, self.threads), self.compiled,
                           lambda: self._measuring_s)

    def record(self, plan: Plan, actual_s: float, read_write_s: float | None = None,
               stages: dict[str, float] | None = None) -> None:
        """Refine the overhead terms from a finished run that followed ``plan`` (``read_write_s``: the measured
        read and write stages, when the segmenter reports them; ``stages``: its seconds per stage, the manifest's
        ``timings_s``, which refine the per-stage rates)."""
        tile_seconds = plan.details.get("tile_seconds")
        mvoxels = plan.details.get("mvoxels")
        if tile_seconds is None or not mvoxels:
            return
        if stages:
            units = stage_units(plan.details, int(plan.details.get("instances", 0) or 0) > 0)
            measured = {k: float(v) for k, v in stages.items() if k in STAGES}
            if "plan" in measured:  # a latency measurement is a segmenter's first series' only, not planning's
                measured["plan"] = max(0.0, measured["plan"] - float(plan.details.get("measuring_s", 0.0) or 0.0))
            self.table.record_stages(self.bundle_id, self.device, self.threads, units, measured)
        if plan.predicted_s is None:
            return
        self.table.record_run(self.bundle_id, self.device, self.threads, float(mvoxels), float(tile_seconds),
                              actual_s, int(plan.details.get("instances", 0) or 0), read_write_s)
