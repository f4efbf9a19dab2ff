"""Segment one series with a bundle: read -> preprocess -> infer -> postprocess -> write.

This is the one entry point the command line (``edgeseg segment``) and the watcher call.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import platform
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeseg import __version__
from edgeseg.bundle.hashing import sha256_file
from edgeseg.bundle.schema import Bundle, Part, Variant, load_bundle
from edgeseg.errors import InferenceError
from edgeseg.runtime.infer.engine import Engine, compile_part
from edgeseg.runtime.infer.sliding_window import sliding_window
from edgeseg.runtime.infer.tiling import tile_count
from edgeseg.runtime.options import OutputOptions, SegmentOptions
from edgeseg.runtime.postprocess import empty_labels, logits_to_part_labels, merge_part, to_input_grid
from edgeseg.runtime.preprocess import orient, preprocess
from edgeseg.runtime.read import SeriesRef, Volume, read_series
from edgeseg.runtime.write import COMPLETE, PARTIAL, SegmentResult, describe_missing, write_results
from edgeseg.typing import StrPath

__all__ = ["COMPLETE", "PARTIAL", "OutputOptions", "ProgressCallback", "SegmentOptions", "SegmentResult", "Timings",
           "clear_engines", "get_engine", "run_manifest", "segment_series", "segment_volume"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], None]


# --------------------------------------------------------------------------------------------------------------
# compiled models are kept between series (the watcher segments many): keyed by bundle, part, device, precision

_ENGINES: OrderedDict[tuple[Any, ...], Engine] = OrderedDict()
_ENGINES_LOCK = threading.Lock()
_MAX_ENGINES = 4


def get_engine(bundle: Bundle, part: Part, options: SegmentOptions) -> Engine:
    """A compiled :class:`~edgeseg.runtime.infer.engine.Engine` for the part, reused across calls."""
    key = (str(bundle.path), bundle.files.get(next(iter(part.models.values())).xml), part.name, options.device,
           options.precision, options.threads, str(options.cache_dir))
    with _ENGINES_LOCK:
        if key in _ENGINES:
            _ENGINES.move_to_end(key)
            return _ENGINES[key]
    engine = compile_part(bundle, part, options.device, options.precision, options.threads, options.cache_dir)
    with _ENGINES_LOCK:
        _ENGINES[key] = engine
        while len(_ENGINES) > _MAX_ENGINES:
            _ENGINES.popitem(last=False)
    return engine


def clear_engines() -> None:
    with _ENGINES_LOCK:
        _ENGINES.clear()


@dataclass
class Timings:
    """Seconds per stage, summed over parts."""

    read: float = 0.0
    preprocess: float = 0.0
    compile: float = 0.0
    infer: float = 0.0
    postprocess: float = 0.0
    write: float = 0.0

    @property
    def total(self) -> float:
        return self.read + self.preprocess + self.compile + self.infer + self.postprocess + self.write


def segment_volume(volume: Volume, bundle: Bundle, options: SegmentOptions | None = None,
                   progress: ProgressCallback | None = None,
                   timings: Timings | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Segment an in-memory :class:`~edgeseg.runtime.read.volume.Volume`; no files are written.

    Returns the merged label map on exactly ``volume``'s grid ((I, J, K), uint8/uint16, bundle label numbers)
    and a run record (variant, parts, precision used per part, tiles, timings).
    """
    options = options or SegmentOptions()
    timings = timings if timings is not None else Timings()
    variant: Variant = bundle.variant(options.variant)
    t0 = time.perf_counter()
    oriented = orient(volume, variant)
    timings.preprocess += time.perf_counter() - t0
    merged = empty_labels(oriented.array.shape, max(bundle.labels))
    parts_record = []
    for index, part in enumerate(variant.parts):
        t0 = time.perf_counter()
        pre = preprocess(oriented, part)
        timings.preprocess += time.perf_counter() - t0

        t0 = time.perf_counter()
        engine = get_engine(bundle, part, options)
        timings.compile += time.perf_counter() - t0

        # a planner's coarser step only ever coarsens a part's own step
        step = max(part.tile_step_size, options.tile_step_size or 0.0)
        mirror = part.mirror_axes if part.use_mirroring else None

        def tile_progress(done: int, total: int, _i: int = index) -> None:
            if progress:
                progress(f"part {_i + 1}/{len(variant.parts)} ({part.name}): tile {done}/{total}",
                         (_i + done / max(total, 1)) / len(variant.parts))

        t0 = time.perf_counter()
        try:
            # few cores: the engine's own request, tile after tile; more cores: overlap requests
            model = engine.request if (os.cpu_count() or 1) <= 4 and engine.request is not None else engine.compiled
            prediction = sliding_window(pre.data, model, part.patch_size, part.num_outputs, step,
                                        part.use_gaussian, mirror, tile_progress)
        except FloatingPointError as err:
            raise InferenceError(f"Part '{part.name}': {err}") from err
        finally:
            if index < len(variant.parts) - 1:
                engine.release()  # memory bound: this part's activations are not needed while the next runs
        timings.infer += time.perf_counter() - t0

        t0 = time.perf_counter()
        try:
            part_labels = logits_to_part_labels(prediction, pre, part)
        except FloatingPointError as err:
            raise InferenceError(f"Part '{part.name}': {err}") from err
        del prediction
        merge_part(merged, part_labels, part)
        timings.postprocess += time.perf_counter() - t0
        parts_record.append({
            "name": part.name, "precision": engine.precision, "device": engine.device,
            "network_shape": list(pre.data.shape[1:]), "tile_step_size": step,
            "tiles": tile_count(pre.data.shape[1:], part.patch_size, step),
            "mirroring": list(mirror) if mirror else None,
        })
    t0 = time.perf_counter()
    labels = to_input_grid(merged, oriented)
    timings.postprocess += time.perf_counter() - t0
    if tuple(labels.shape) != tuple(volume.array.shape):  # geometry is sacred: never write a wrong grid
        raise InferenceError(f"internal error: mask shape {labels.shape} != input shape {volume.array.shape}")
    record = {
        "variant": variant.name, "parts": parts_record,
        "timings_s": {k: round(v, 3) for k, v in asdict(timings).items()} | {"total": round(timings.total, 3)},
    }
    return labels, record


def run_manifest(bundle: Bundle, volume: Volume, options: SegmentOptions, record: dict[str, Any]) -> dict[str, Any]:
    """What a PACS admin or auditor needs to know about one run."""
    import openvino

    return {
        "edgeseg_version": __version__,
        "bundle": {"name": bundle.name, "path": str(bundle.path), "intended_use": bundle.intended_use,
                   "bundle_json_sha256": _bundle_digest(bundle)},
        "input": {"source": str(volume.source), "kind": volume.kind, "series_uid": volume.series_uid,
                  "shape": list(volume.shape), "spacing_mm": [round(s, 4) for s in volume.spacing]},
        "options": {"device": options.device, "precision_requested": options.precision,
                    "variant_requested": options.variant, "threads": options.threads,
                    "time_budget_s": options.time_budget_s},
        "run": record,
        "versions": {"openvino": openvino.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
    }


def _bundle_digest(bundle: Bundle) -> str:
    return sha256_file(bundle.path / "bundle.json")


def segment_series(source: SeriesRef | Volume | StrPath, bundle: Bundle | Path | str,
                   options: SegmentOptions | None = None, progress: ProgressCallback | None = None,
                   plan: dict[str, Any] | None = None, out_parent: Path | None = None) -> SegmentResult:
    """Read a series (NIfTI/PAR file, DICOM folder, ``SeriesRef`` or an already read ``Volume``), segment it and
    write the results atomically into ``<name>.edgeseg/`` beside it (or in ``out_parent``: one-shot mode, whose input
    may be read-only). ``plan`` (from the watcher's planner) is
    recorded in the manifest. A requested output that could not be written makes the result partial
    (``result.status`` is ``PARTIAL``, ``result.missing_outputs`` says why: :mod:`edgeseg.runtime.write.results`);
    that does not raise. Raises :class:`~edgeseg.errors.EdgesegError` subclasses for bad input; never modifies the
    input."""
    options = options or SegmentOptions()
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    timings = Timings()
    t0 = time.perf_counter()
    volume = source if isinstance(source, Volume) else read_series(source, options.limits)
    timings.read = time.perf_counter() - t0
    log.info("segmenting series=%s shape=%s spacing=%s", volume.name, volume.shape,
             tuple(round(s, 3) for s in volume.spacing))
    labels, record = segment_volume(volume, bundle, options, progress, timings)
    t0 = time.perf_counter()
    manifest = run_manifest(bundle, volume, options, record)
    if plan is not None:
        manifest["plan"] = plan
    result = write_results(volume, labels, bundle.labels, options.outputs, manifest, out_parent=out_parent)
    timings.write = time.perf_counter() - t0
    if result.missing_outputs:
        log.warning("partial series=%s output=%s total_s=%.2f: %s", volume.name, result.output_dir, timings.total,
                    describe_missing(result.missing_outputs))
    else:
        log.info("done series=%s output=%s total_s=%.2f", volume.name, result.output_dir, timings.total)
    return dataclasses.replace(result, timings={k: round(v, 3) for k, v in asdict(timings).items()})
