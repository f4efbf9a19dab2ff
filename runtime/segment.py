"""The pipeline of one volume with a bundle: preprocess -> infer -> postprocess, on exactly the volume's grid.

:class:`edgeseg.runtime.segmenter.Segmenter` (set up once per bundle) runs it between reading and writing; it owns
the compiled engines this module asks for through ``engine_for``.
"""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from edgeseg import __version__
from edgeseg.bundle.schema import Bundle, Part, Variant
from edgeseg.errors import InferenceError
from edgeseg.runtime.heap import release_freed_memory
from edgeseg.runtime.infer.engine import Engine
from edgeseg.runtime.infer.sliding_window import AccumulatingRequest, sliding_window, window_jobs
from edgeseg.runtime.infer.tiling import tile_count
from edgeseg.runtime.options import SegmentOptions
from edgeseg.runtime.postprocess import empty_labels, logits_to_part_labels, merge_part, to_input_grid
from edgeseg.runtime.preprocess import orient, preprocess
from edgeseg.runtime.read import Volume

__all__ = ["EngineFor", "ProgressCallback", "Timings", "run_manifest", "segment_volume"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], None]
#: the compiled engine of a part (the segmenter's, kept between series)
EngineFor = Callable[[Part], Engine]


@dataclass
class Timings:
    """Seconds per stage of one series, summed over parts: ``read`` (the input), ``plan`` (the planner, a tile
    latency measurement included), ``preprocess``, ``compile``, ``infer`` (the sliding window), ``resample`` (the
    argmax and resampling back to the input grid, reorientation included), ``postprocess`` (merging the parts),
    ``write`` (every output; the manifest's ``write_s`` has each writer) and ``other`` (what the stages do not
    cover: the manifest record, checkpoints; set when the wall time is known, so that ``total`` is the wall time)."""

    read: float = 0.0
    plan: float = 0.0
    preprocess: float = 0.0
    compile: float = 0.0
    infer: float = 0.0
    resample: float = 0.0
    postprocess: float = 0.0
    write: float = 0.0
    other: float = 0.0

    @property
    def total(self) -> float:
        return sum(float(v) for v in asdict(self).values())

    def rounded(self) -> dict[str, float]:
        """Seconds per stage and ``total``, to the millisecond (the manifest's ``timings_s``)."""
        return {k: round(v, 3) for k, v in asdict(self).items()} | {"total": round(self.total, 3)}


def segment_volume(volume: Volume, bundle: Bundle, options: SegmentOptions, engine_for: EngineFor,
                   progress: ProgressCallback | None = None,
                   timings: Timings | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Segment an in-memory :class:`~edgeseg.runtime.read.volume.Volume`; no files are written.

    ``progress(stage, fraction)`` is called after every tile and after each part's postprocessing (the segmenter's
    checkpoint: what it raises stops the run). Returns the merged label map on exactly ``volume``'s grid
    ((I, J, K), uint8/uint16, bundle label numbers) and a run record (variant, parts, precision used per part, tiles,
    timings).
    """
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
        engine = engine_for(part)
        timings.compile += time.perf_counter() - t0

        # a planner's coarser step only ever coarsens a part's own step
        step = max(part.tile_step_size, options.tile_step_size or 0.0)
        mirror = part.mirror_axes if part.use_mirroring else None

        def tile_progress(done: int, total: int, _i: int = index) -> None:
            if progress:
                progress(f"part {_i + 1}/{len(variant.parts)} ({part.name}): tile {done}/{total}",
                         (_i + done / max(total, 1)) / len(variant.parts))

        t0 = time.perf_counter()
        # a network that accumulates itself: its one request, tile after tile; else the engine's requests in turn
        # (more than 4 cores: the next tile infers while this one is aggregated). The requests are this series'
        # alone, and released (activations and tensors) when the window ends: Engine.window
        with engine.window(1 if engine.accumulates else window_jobs()) as requests:
            try:
                model = AccumulatingRequest(requests[0]) if engine.accumulates else requests
                prediction = sliding_window(pre.data, model, part.patch_size,
                                            part.num_outputs, step, part.use_gaussian, mirror, tile_progress)
            except FloatingPointError as err:
                raise InferenceError(f"Part '{part.name}': {err}") from err
        timings.infer += time.perf_counter() - t0

        t0 = time.perf_counter()
        try:
            part_labels = logits_to_part_labels(prediction, pre, part)
        except FloatingPointError as err:
            raise InferenceError(f"Part '{part.name}': {err}") from err
        del prediction
        release_freed_memory()  # the logits and the resampling workers' buffers, before the next part's
        timings.resample += time.perf_counter() - t0
        t0 = time.perf_counter()
        merge_part(merged, part_labels, part)
        timings.postprocess += time.perf_counter() - t0
        if progress:
            progress(f"part {index + 1}/{len(variant.parts)} ({part.name}): postprocessed",
                     (index + 1) / len(variant.parts))
        parts_record.append({
            "name": part.name, "precision": engine.precision, "device": engine.device,
            "precision_verdict": engine.verdict,
            "network_shape": list(pre.data.shape[1:]), "tile_step_size": step,
            "tiles": tile_count(pre.data.shape[1:], part.patch_size, step),
            "mirroring": list(mirror) if mirror else None,
        })
    t0 = time.perf_counter()
    labels = to_input_grid(merged, oriented)
    timings.resample += time.perf_counter() - t0
    if tuple(labels.shape) != tuple(volume.array.shape):  # geometry is sacred: never write a wrong grid
        raise InferenceError(f"internal error: mask shape {labels.shape} != input shape {volume.array.shape}")
    record = {
        "variant": variant.name, "parts": parts_record,
        "timings_s": timings.rounded(),
    }
    return labels, record


def run_manifest(bundle: Bundle, bundle_digest: str, volume: Volume, options: SegmentOptions,
                 record: dict[str, Any]) -> dict[str, Any]:
    """What a PACS admin or auditor needs to know about one run (``bundle_digest``: sha256 of its bundle.json)."""
    import openvino

    return {
        "edgeseg_version": __version__,
        "bundle": {"name": bundle.name, "version": bundle.version, "path": str(bundle.path),
                   "intended_use": bundle.intended_use, "not_for_clinical_use": bundle.not_for_clinical_use,
                   "bundle_json_sha256": bundle_digest,
                   "precision_verdicts": {p: v.get("verdict") for p, v in bundle.precision_verdicts.items()}},
        "input": {"source": str(volume.source), "kind": volume.kind, "series_uid": volume.series_uid,
                  "shape": list(volume.shape), "spacing_mm": [round(s, 4) for s in volume.spacing]},
        "options": {"device": options.device, "precision_requested": options.precision,
                    "variant_requested": options.variant, "threads": options.threads,
                    "time_budget_s": options.time_budget_s},
        "run": record,
        "versions": {"openvino": openvino.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
    }

