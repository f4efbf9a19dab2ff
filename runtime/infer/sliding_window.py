"""nnU-Net's sliding-window prediction with an OpenVINO model (or any callable, for tests).

Behaviour matched to nnunetv2's predictor: pad to at least the patch size (content centred, extra voxel
above), tiles from :func:`compute_steps`, optional mirroring (mean over all flip combinations of the allowed
axes), multiplication by nnU-Net's fp16 Gaussian importance map, accumulation of weighted logits and weights in fp16
with nnU-Net's rounding (:mod:`edgeseg.runtime.infer.aggregate`), division, removal of the padding, argmax.
Memory: the accumulator is (K, Z, Y, X) fp16; at most ``jobs`` tiles are in flight.

With several OpenVINO infer requests (:func:`window_jobs`: on more than 4 cores), the window overlaps the
aggregation of a tile with the inference of the next: the requests are used in turn (ping-pong), and while this
thread adds the finished tile from its request's own output buffer, the next request is already inferring
(OpenVINO releases the GIL). A request is restarted only after its output has been aggregated, so no output is
overwritten while it is read.

With an :class:`AccumulatingRequest` (an engine whose network carries the fp16 update itself,
:func:`~edgeseg.runtime.infer.engine.accumulating_model`) the tiles run one after the other: each tile's region of
the accumulator goes into the request and comes back updated; only the weights are added here.
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgeseg.runtime.arrays import even_ranges, usable_cores
from edgeseg.runtime.infer.aggregate import (Fp16Aggregator, aggregation_threads, argmax_of_quotient,
                                              as_float32, logits_of)
from edgeseg.runtime.infer.tiling import compute_steps, gaussian_importance

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def pad_to_patch(data: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad (C, *spatial) to at least ``patch``; return the padded array and the slicer that undoes it."""
    spatial = data.shape[1:]
    new = [max(p, s) for p, s in zip(patch, spatial)]
    if list(spatial) == new:
        return data, tuple(slice(0, s) for s in spatial)
    pads = [(0, 0)]
    slicer = []
    for s, n in zip(spatial, new):
        diff = n - s
        below, above = diff // 2, diff // 2 + diff % 2
        pads.append((below, above))
        slicer.append(slice(below, below + s))
    return np.pad(data, pads, mode="constant", constant_values=0), tuple(slicer)


def tile_slicers(shape: Sequence[int], patch: Sequence[int], step: float) -> list[tuple[slice, ...]]:
    steps = compute_steps(tuple(shape), tuple(patch), step)
    return [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in itertools.product(*steps)]


def mirror_combinations(axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """() (no flip) plus every non-empty combination of the spatial mirror axes, as nnU-Net enumerates them."""
    if not axes:
        return [()]
    combos: list[tuple[int, ...]] = [()]
    for i in range(len(axes)):
        combos.extend(itertools.combinations(axes, i + 1))
    return combos


class _Accumulator:
    """Averages each tile's mirrored predictions (float32), then hands the tile to the fp16 aggregator."""

    def __init__(self, num_outputs: int, shape: Sequence[int], patch: Sequence[int], use_gaussian: bool,
                 n_mirror: int, threads: int | None = None) -> None:
        g = gaussian_importance(tuple(patch)) if use_gaussian else np.ones(tuple(patch), np.float16)
        self.fp16 = Fp16Aggregator(num_outputs, shape, patch, g, threads)
        self.n_mirror = n_mirror
        self.pending: dict[int, tuple[np.ndarray, int]] = {}
        self.lock = threading.Lock()
        self.done = 0

    def add(self, index: int, sl: tuple[slice, ...], flip: tuple[int, ...], logits: np.ndarray) -> bool:
        """Add one (possibly flipped) prediction (K, *patch): float32, fp16 or bf16 bits (:func:`logits_of`); True
        when the tile is complete."""
        if flip:
            logits = np.flip(logits, axis=tuple(a + 1 for a in flip))
        with self.lock:
            if self.n_mirror > 1:
                total, count = self.pending.pop(index, (None, 0))
                logits = as_float32(logits)
                total = logits.copy() if total is None else total + logits
                count += 1
                if count < self.n_mirror:
                    self.pending[index] = (total, count)
                    return False
                pred = total / np.float32(self.n_mirror)
            else:
                pred = logits
            self.fp16.add(sl, pred)
            self.done += 1
            return True


class Aggregated:
    """The finished sliding window: nnU-Net's fp16 logits, read out as labels or as float32 logits.

    ``argmax`` never materialises all classes in float32 (slab by slab); ``logits`` does (needed only when the
    prediction must be resampled back to another grid)."""

    def __init__(self, acc: _Accumulator, unpad: tuple[slice, ...]) -> None:
        self._acc = acc.fp16
        self.unpad = unpad

    def argmax(self, slab: int = 4) -> np.ndarray:
        """uint8 (uint16 above 256 classes) labels of the unpadded region; first maximum wins, as torch."""
        logits = self._acc.logits[(slice(None), *self.unpad)]
        weights = self._acc.weights[self.unpad]
        out = np.empty(logits.shape[1:], dtype=np.uint8 if logits.shape[0] <= 256 else np.uint16)
        return argmax_of_quotient(logits, weights, out, slab)

    def logits(self) -> np.ndarray:
        """float32 copy of the unpadded fp16 logits (exact values)."""
        return self._acc.finish()[(slice(None), *self.unpad)]

    def logits16(self) -> np.ndarray:
        """The unpadded fp16 logits (nnU-Net's values), computed in place in the accumulator: no float32 copy of
        all classes. Afterwards :meth:`argmax` and :meth:`logits` are no longer valid."""
        return self._acc.quotient_in_place()[(slice(None), *self.unpad)]


class AccumulatingRequest:
    """An infer request of an engine that accumulates in the network
    (:func:`~edgeseg.runtime.infer.engine.accumulating_model`: inputs the tile and its accumulator region, output
    the updated region). :func:`sliding_window` then only copies each tile's region of the accumulator into the
    request's accumulator input, which is also its output (the update is element-wise, so it runs in place), and
    back after the inference; the weights are added as before. Tiles run one after the other (each reads what the
    previous one wrote) and unmirrored."""

    def __init__(self, request: Any) -> None:
        self.request = request


def _jobs(slicers: list[tuple[slice, ...]], flips: list[tuple[int, ...]]) -> Iterator[tuple[int, tuple, tuple]]:
    for i, sl in enumerate(slicers):
        for f in flips:
            yield i, sl, f


def predict_logits(data: np.ndarray, model: Any, patch: Sequence[int], num_outputs: int, tile_step_size: float,
                   use_gaussian: bool = True, mirror_axes: Sequence[int] | None = None,
                   progress: Progress | None = None, jobs: int | None = None,
                   threads: int | None = None) -> np.ndarray:
    """Sliding-window logits (K, *data.shape[1:]) float32 (holding nnU-Net's fp16 values)."""
    return sliding_window(data, model, patch, num_outputs, tile_step_size, use_gaussian, mirror_axes, progress,
                          jobs, threads).logits()


def window_jobs() -> int:
    """Infer requests the window uses in turn by default: 2 where a core is left for the aggregation beside
    OpenVINO's inference threads (more than 4 cores given to the process), else 1 (tile after tile). On the
    2-core machine the ping-pong was not faster (benchmarks/sliding_window_tile.py, INT8 51-class 128^3 tiles:
    0.74 s per tile with 2 requests against 0.68 s with 1, network alone 0.43 s; see docs/benchmarks.md): the
    aggregation thread takes a core from the network's two threads, and a spare request holds another output
    buffer."""
    return 2 if usable_cores() > 4 else 1


def sliding_window(data: np.ndarray, model: Any, patch: Sequence[int], num_outputs: int, tile_step_size: float,
                   use_gaussian: bool = True, mirror_axes: Sequence[int] | None = None,
                   progress: Progress | None = None, jobs: int | None = None,
                   threads: int | None = None) -> Aggregated:
    """nnU-Net's sliding window over one preprocessed (C, Z, Y, X) volume; read the result with
    :meth:`Aggregated.argmax` or :meth:`Aggregated.logits`.

    ``model`` is a sequence of ``openvino.InferRequest`` of one compiled model (used in turn: while one request's
    tile is aggregated, the next infers; :meth:`Engine.window` lends them for a window), a single ``InferRequest``
    (tile after tile), an ``openvino.CompiledModel`` (``jobs`` requests created for this call, default
    :func:`window_jobs`) or any callable mapping a (1, C, *patch) float32 array to (1, K, *patch) logits (run
    synchronously; tests use constant/synthetic models). ``threads``: aggregation threads (default
    :func:`~edgeseg.runtime.infer.aggregate.aggregation_threads` of the requests used: every core with one, one
    beside several); the result does not depend on it.
    """
    padded, unpad = pad_to_patch(data, patch)
    slicers = tile_slicers(padded.shape[1:], patch, tile_step_size)
    flips = mirror_combinations(mirror_axes)
    requests: list[Any] | None = None  # the OpenVINO requests used in turn (one: tile after tile)
    if _is_openvino(model) and type(model).__name__ == "CompiledModel":
        requests = [model.create_infer_request() for _ in range(max(1, jobs or window_jobs()))]
    elif type(model).__name__ == "InferRequest":
        requests = [model]
    elif isinstance(model, (list, tuple)) and model and all(_is_openvino(r) for r in model):
        requests = list(model)
    threads = threads or aggregation_threads(len(requests) if requests else 1)
    acc = _Accumulator(num_outputs, padded.shape[1:], patch, use_gaussian, len(flips), threads)
    total = len(slicers)
    log.debug("sliding window: %d tiles x %d flips, shape %s, patch %s, step %s", total, len(flips),
              padded.shape[1:], tuple(patch), tile_step_size)

    def cut(sl: tuple[slice, ...], flip: tuple[int, ...]) -> np.ndarray:
        tile = padded[(slice(None), *sl)]
        if flip:
            tile = np.flip(tile, axis=tuple(a + 1 for a in flip))
        return np.ascontiguousarray(tile[None], dtype=np.float32)

    def add(job: tuple[int, tuple, tuple], out: np.ndarray) -> None:
        index, sl, flip = job
        if acc.add(index, sl, flip, out) and progress:
            progress(acc.done, total)

    try:
        if isinstance(model, AccumulatingRequest):
            if len(flips) > 1:
                raise ValueError("a network that accumulates itself runs unmirrored windows only")
            _accumulate_in_network(model.request, slicers, cut, acc, progress)
        elif requests:
            _ping_pong(requests, _jobs(slicers, flips), cut, add)
        else:  # a plain callable (tests)
            for job in _jobs(slicers, flips):
                add(job, np.asarray(model(cut(job[1], job[2])))[0])  # fp16 or fp32; the aggregator takes either
    finally:
        acc.fp16.close()
    return Aggregated(acc, unpad)


def _first_untouched(slicers: list[tuple[slice, ...]]) -> list[tuple[int, ...]] | None:
    """Per tile of ``slicers`` (nnU-Net's order: the product of the per-axis starts, last axis fastest), the corner
    (offsets in the tile) of the box that no earlier tile covered: a voxel of a tile was covered before iff along
    some axis it lies in the overlap with the previous tile on that axis (the earlier tiles are exactly those with a
    smaller start on the first axis where they differ, and every start along an axis has a tile at each start
    along the others). None when ``slicers`` are not in that order."""
    starts = [sorted({sl[a].start for sl in slicers}) for a in range(len(slicers[0]))]
    if [tuple(sl[a].start for a in range(len(starts))) for sl in slicers] != list(itertools.product(*starts)):
        return None
    previous_end = [{s: (axis[i - 1] + (slicers[0][a].stop - slicers[0][a].start) if i else s)
                     for i, s in enumerate(axis)} for a, axis in enumerate(starts)]
    return [tuple(max(0, previous_end[a][sl[a].start] - sl[a].start) for a in range(len(starts))) for sl in slicers]


def _accumulate_in_network(request: Any, slicers: list[tuple[slice, ...]],
                           cut: Callable[[tuple, tuple], np.ndarray], acc: _Accumulator,
                           progress: Progress | None) -> None:
    """Every tile through an :class:`AccumulatingRequest`: the tile's region of the fp16 accumulator is copied
    into the request's own accumulator input, which is also made its output (the network updates it in place:
    one (K, *patch) buffer instead of two), and copied back; then the weights. Of the region only what earlier
    tiles covered is copied in (:func:`_first_untouched`; the rest is still the accumulator's zeros: the buffer is
    zeroed there instead of read). The copies are strided (rows of the patch's last axis) and split by classes
    over the process's cores: on the 2-core machine 26 classes of 128^3 took 26 ms in and 32 ms out in one
    thread, 14 and 16 ms in two, and the TS-sized two-part window of 24 tiles 11.9 -> 10.8 s (OpenVINO's threads
    are idle between tiles)."""
    region_in = request.get_input_tensor(1)
    request.set_output_tensor(0, region_in)
    buffer = region_in.data
    corners = _first_untouched(slicers)
    ranges = even_ranges(buffer.shape[0], usable_cores())
    with ThreadPoolExecutor(len(ranges), thread_name_prefix="edgeseg-window-copy") as pool:

        def each(copy: Callable[[slice], Any]) -> None:
            list(pool.map(copy, ranges))

        for index, sl in enumerate(slicers):
            region = acc.fp16.logits[(slice(None), *sl)]
            corner = corners[index] if corners else None
            each(lambda k: _gather_covered(buffer[k], region[k], corner) if corner is not None
                 else np.copyto(buffer[k], region[k]))
            request.infer({0: cut(sl, ())}, share_inputs=True, share_outputs=True)
            each(lambda k: np.copyto(region[k], buffer[k]))
            acc.fp16.add_weights(sl)
            acc.done += 1
            if progress:
                progress(acc.done, len(slicers))


def _gather_covered(buffer: np.ndarray, region: np.ndarray, corner: tuple[int, ...]) -> None:
    """``buffer`` = ``region`` (K, Z, Y, X), knowing that the box from ``corner`` on is zeros in ``region``: the
    slabs before the corner along each axis are copied, the box is zero-filled."""
    z, y, x = corner
    buffer[:, z:, y:, x:] = 0
    np.copyto(buffer[:, :z], region[:, :z])
    np.copyto(buffer[:, z:, :y], region[:, z:, :y])
    np.copyto(buffer[:, z:, y:, :x], region[:, z:, y:, :x])


def _ping_pong(requests: list[Any], jobs: Iterator[tuple[int, tuple, tuple]],
               cut: Callable[[tuple, tuple], np.ndarray],
               add: Callable[[tuple[int, tuple, tuple], np.ndarray], None]) -> None:
    """Run ``jobs`` on ``requests`` in turn: all requests are started, then the oldest is waited for, its output
    aggregated (read in place from the request's own output tensor) and only then restarted with the next tile.
    OpenVINO runs the started requests while this thread aggregates."""
    in_flight: deque[tuple[Any, tuple[int, tuple, tuple], np.ndarray]] = deque()

    def start(request: Any, job: tuple[int, tuple, tuple]) -> None:
        x = cut(job[1], job[2])  # kept referenced until the request is done: the request reads it in place
        request.start_async({0: x}, share_inputs=True)
        in_flight.append((request, job, x))

    try:
        for request in requests:
            job = next(jobs, None)
            if job is None:
                break
            start(request, job)
        while in_flight:
            request, job, _ = in_flight.popleft()
            request.wait()
            add(job, logits_of(request.get_output_tensor(0))[0])
            job = next(jobs, None)
            if job is not None:
                start(request, job)
    finally:  # an error (or a stop from the progress callback): let OpenVINO finish before the inputs go
        for request, _, _ in in_flight:
            request.wait()


def _is_openvino(model: Any) -> bool:
    return type(model).__module__.startswith("openvino")
