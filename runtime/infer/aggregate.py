"""nnU-Net's fp16 sliding-window aggregation, computed by tiny OpenVINO kernels.

nnU-Net accumulates Gaussian-weighted logits and weights in fp16: per tile ``acc = f16(f32(acc) + pred * g)`` and
``w = f16(f32(w) + g)``, then ``logits = f16(f32(acc) / f32(w))``. Matching that rounding is what makes our
labels equal nnU-Net's at near-ties (a float32 accumulator differed on 0.7 % of the voxels of a barely trained
model). numpy has no vectorised fp16 arithmetic (one 30-class 128^3 tile took 2.8 s to add here), so the
element-wise work runs in OpenVINO kernels pinned to f32 arithmetic; the accumulator itself stays a numpy fp16
array, half the memory of float32.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from edgeseg.runtime.arrays import usable_cores


#: elements per kernel call: a chunk's gathered accumulator, prediction, Gaussian and result (~5 MB for 512 K
#: elements with an f32 prediction) stay in the core's caches between the gather, the kernel and the scatter
#: (measured: 0.5-4 M elements per chunk all add a 51-class 128^3 tile in ~0.13 s on one core)
CHUNK_ELEMENTS = 1 << 19


#: how bf16 logits travel in numpy (which has no bf16): their raw bits as uint16 (:func:`logits_of`); the kernels
#: declare them bf16, :func:`as_float32` widens them exactly
BF16_BITS = np.dtype(np.uint16)


def logits_of(tensor: Any) -> np.ndarray:
    """An OpenVINO output tensor's data as the aggregation takes it, without a copy: float32 or fp16 as they are,
    bf16 as :data:`BF16_BITS` (OpenVINO's numpy view of a bf16 tensor says float16, which would misread them)."""
    data = tensor.data
    if tensor.element_type.get_type_name() == "bf16":
        return data.view(BF16_BITS)
    return data


def as_float32(logits: np.ndarray) -> np.ndarray:
    """float32 values of float32, fp16 or bf16-bit (:data:`BF16_BITS`) logits (exact: both widen losslessly)."""
    if logits.dtype == BF16_BITS:
        return (logits.astype(np.uint32) << 16).view(np.float32)
    return logits.astype(np.float32, copy=False)


def _pred_kind(pred: np.ndarray) -> str:
    return {np.dtype(np.float16): "f16", BF16_BITS: "bf16"}.get(pred.dtype, "f32")


@lru_cache(maxsize=32)
def _accumulate_kernel(shape: tuple[int, ...], pred_type: str, worker: int) -> Any:
    """acc' = f16(f32(acc) + f32(pred) * g) for one chunk (classes, *rows) with g (*rows) f32; nnU-Net computes
    ``prediction *= gaussian`` (float32) and ``predicted_logits[sl] += prediction`` (fp16 += f32) in that order.
    One thread: each aggregation worker runs its own compiled copy (``worker`` keys the cache).

    OpenVINO's fused element-wise code ("snippets") turns the multiply and add into one FMA, rounded once; torch
    rounds the float32 product first. For an fp16 or bf16 prediction the product with an fp16 weight is exact in
    float32 (at most 11 + 11 significant bits), so the two agree; for a float32 prediction (FP32 networks, the
    parity path) snippets are off for this kernel (about 2.4x slower, ~1 % of an FP32 tile), which gives torch's
    rounding bit for bit."""
    import openvino as ov
    import openvino.opset13 as ops

    from edgeseg.runtime.infer.engine import core

    acc = ops.parameter(list(shape), ov.Type.f16, name="acc")
    pred = ops.parameter(list(shape), {"f16": ov.Type.f16, "bf16": ov.Type.bf16}.get(pred_type, ov.Type.f32),
                         name="pred")
    g = ops.parameter(list(shape[1:]), ov.Type.f32, name="g")
    pred32 = ops.convert(pred, ov.Type.f32) if pred_type != "f32" else pred
    new_acc = ops.convert(ops.add(ops.convert(acc, ov.Type.f32), ops.multiply(pred32, g)), ov.Type.f16)
    model = ov.Model([new_acc], [acc, pred, g], f"nnunet_fp16_accumulate_{worker}")
    config = _ONE_THREAD if pred_type != "f32" else {**_ONE_THREAD, "SNIPPETS_MODE": "DISABLE"}
    return core().compile_model(model, "CPU", config)


@lru_cache(maxsize=16)
def _weights_kernel(shape: tuple[int, ...], worker: int) -> Any:
    """w' = f16(f32(w) + g) (nnU-Net's ``n_predictions[sl] += gaussian`` in fp16)."""
    import openvino as ov
    import openvino.opset13 as ops

    from edgeseg.runtime.infer.engine import core

    w = ops.parameter(list(shape), ov.Type.f16, name="w")
    g = ops.parameter(list(shape), ov.Type.f32, name="g")
    model = ov.Model([ops.convert(ops.add(ops.convert(w, ov.Type.f32), g), ov.Type.f16)], [w, g],
                     f"nnunet_fp16_weights_{worker}")
    return core().compile_model(model, "CPU", _ONE_THREAD)


_ONE_THREAD = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1,
               "NUM_STREAMS": 1}


def aggregation_threads(requests: int = 1) -> int:
    """Threads that aggregate a tile by default, for a window that uses ``requests`` infer requests in turn.

    One request (tile after tile, :func:`~edgeseg.runtime.infer.sliding_window.window_jobs` on up to 4 cores):
    OpenVINO's inference threads are idle while a tile is aggregated, so every core the process may use
    aggregates. Measured with ``benchmarks/sliding_window_tile.py`` (INT8 51-class 128^3 tiles, separate update):
    on the 2-core AMD EPYC (AVX2) machine a first interleaved series gave +17.5-18.3 % over the network alone with
    one thread and +5.1-5.4 % with two (4.4-4.7 s per tile), a second no difference within that VM's 10-20 % noise;
    on the 2-core Xeon two were no faster than one (~0.13 s per tile either way). Several requests (ping-pong): one
    thread, beside the request that is inferring."""
    return usable_cores() if requests <= 1 else 1


def chunks(num_outputs: int, patch: Sequence[int], target: int | None = None) -> list[tuple[slice, slice]]:
    """(classes, first-axis rows) of the pieces a tile is aggregated in: several whole classes when one class of
    the patch is small, else one class in slabs of rows; about ``target`` (default :data:`CHUNK_ELEMENTS`)
    elements each, covering the tile."""
    target = target or CHUNK_ELEMENTS
    rows, plane = int(patch[0]), int(np.prod(patch[1:]))
    per_class = rows * plane
    if per_class <= target:
        step = max(1, target // per_class)
        return [(slice(k, min(k + step, num_outputs)), slice(0, rows)) for k in range(0, num_outputs, step)]
    step = max(1, target // plane)
    return [(slice(k, k + 1), slice(z, min(z + step, rows))) for k in range(num_outputs) for z in range(0, rows, step)]


#: compiled read-out kernels kept per slab shape (a series needs two: its slabs and the last, thinner one)
_READOUT_SHAPES = 8


@lru_cache(maxsize=_READOUT_SHAPES)
def _divide_kernel(shape: tuple[int, ...]) -> Any:
    """q = f16(f32(acc) / f32(w)) for (K, Z, Y, X) ``acc`` and (Z, Y, X) ``w``. The rounding to fp16 happens at
    the output: with the f32 precision hint the CPU plugin computes any intermediate f16 tensor in f32, so rounding
    inside one graph would be lost. Static shapes: the CPU plugin's dynamic-shape division took 0.20 s for 26
    classes on 160x208x256 where a kernel compiled for the slab's shape takes 0.035 s."""
    import openvino as ov
    import openvino.opset13 as ops

    from edgeseg.runtime.infer.engine import core

    acc = ops.parameter(list(shape), ov.Type.f16, name="acc")
    w = ops.parameter(list(shape[1:]), ov.Type.f16, name="w")
    q = ops.convert(ops.divide(ops.convert(acc, ov.Type.f32), ops.convert(w, ov.Type.f32)), ov.Type.f16)
    model = ov.Model([q], [acc, w], "nnunet_fp16_divide")
    return core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


@lru_cache(maxsize=_READOUT_SHAPES)
def _argmax_kernel(shape: tuple[int, ...]) -> Any:
    """Index of the first maximum over axis 0 of (K, Z, Y, X) fp16 (torch.argmax's tie rule: a stable TopK with
    k=1); static shape, as :func:`_divide_kernel`."""
    import openvino as ov
    import openvino.opset13 as ops

    from edgeseg.runtime.infer.engine import core

    q = ops.parameter(list(shape), ov.Type.f16, name="q")
    top = ops.topk(ops.convert(q, ov.Type.f32), 1, 0, "max", "value", "i32", stable=True)
    model = ov.Model([top.output(1)], [q], "argmax_first")
    return core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


class _SlabRequests:
    """One infer request per read-out kernel and slab shape, for all the slabs of one read-out (a request is
    reused: its output buffer is read before the next slab of its shape runs)."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, tuple[int, ...]], Any] = {}

    def divide(self, acc: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """nnU-Net's fp16 quotient of one slab, in the request's own output buffer (valid until the next slab of
        this shape); raises FloatingPointError on non-finite values."""
        q = self._get("divide", acc.shape).infer({"acc": np.ascontiguousarray(acc), "w": np.ascontiguousarray(weights)},
                                                 share_inputs=True, share_outputs=True)[0]
        _check_finite(q)
        return q

    def argmax(self, q: np.ndarray) -> np.ndarray:
        return self._get("argmax", q.shape).infer({"q": q}, share_inputs=True, share_outputs=True)[0][0]

    def _get(self, kind: str, shape: tuple[int, ...]) -> Any:
        key = (kind, tuple(int(n) for n in shape))
        request = self._requests.get(key)
        if request is None:
            kernel = _divide_kernel(key[1]) if kind == "divide" else _argmax_kernel(key[1])
            request = self._requests[key] = kernel.create_infer_request()
        return request


class Fp16Aggregator:
    """(K, *shape) fp16 logits and (*shape) fp16 weights, updated tile by tile with nnU-Net's rounding.

    A tile is added in chunks (:func:`chunks`: a few classes, or one class's slab of rows) by ``threads`` worker
    threads, each with its own single-threaded kernel and buffers: a chunk's region of the accumulator is gathered
    into a small contiguous buffer, updated by the kernel and scattered back while it is still in the core's
    cache (numpy's copies and OpenVINO's inference release the GIL; how many: :func:`aggregation_threads`). Chunks
    are disjoint and element-wise, so the result does not depend on how a tile is cut or on the thread count.
    ``add`` may be called from one thread at a time; ``finish`` returns float32 logits holding exactly nnU-Net's
    fp16 values (fp16 -> fp32 is exact), so a float32 argmax equals nnU-Net's fp16 argmax.
    """

    def __init__(self, num_outputs: int, shape: Sequence[int], patch: Sequence[int], gaussian: np.ndarray,
                 threads: int | None = None) -> None:
        self.logits = np.zeros((num_outputs, *shape), dtype=np.float16)
        self.weights = np.zeros(tuple(shape), dtype=np.float16)
        self.patch = tuple(int(p) for p in patch)
        self._g32 = np.ascontiguousarray(gaussian, dtype=np.float16).astype(np.float32)
        self._num_outputs = num_outputs
        self._chunks = chunks(num_outputs, self.patch)
        rows = self._chunks[0][1].stop - self._chunks[0][1].start
        self._weight_rows = [slice(z, min(z + rows, self.patch[0])) for z in range(0, self.patch[0], rows)]
        self._threads = max(1, threads or aggregation_threads())
        self._pool: ThreadPoolExecutor | None = None
        self._requests: dict[tuple[Any, ...], Any] = {}
        self._buffers: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
        self._lock = threading.Lock()

    def add(self, sl: tuple[slice, ...], pred: np.ndarray) -> None:
        """Accumulate one tile's (K, *patch) prediction (float32, fp16 from an INT8/FP16 network, or bf16 bits
        (:func:`logits_of`) from one inferring in bf16; not yet weighted) at ``sl``. ``pred`` is only read, and
        only until ``add`` returns."""
        kind = _pred_kind(pred)
        pred = np.ascontiguousarray(pred, dtype=pred.dtype if kind != "f32" else np.float32)
        with self._lock:
            if self._threads == 1:
                self._work(0, sl, pred, kind)
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="edgeseg-aggregate")
            futures = [self._pool.submit(self._work, w, sl, pred, kind) for w in range(self._threads)]
            for f in futures:
                f.result()

    def _work(self, worker: int, sl: tuple[slice, ...], pred: np.ndarray, kind: str) -> None:
        """Worker ``worker``'s share of one tile: every ``threads``-th chunk, and its share of the weights."""
        n = self._threads
        inner = sl[1:]
        for classes, rows in self._chunks[worker::n]:
            z = slice(sl[0].start + rows.start, sl[0].start + rows.stop)
            region = self.logits[(classes, z, *inner)]
            buf = self._buffer(worker, region.shape)
            np.copyto(buf, region)
            request = self._request(("acc", region.shape, kind, worker))
            out = request.infer({"acc": buf, "pred": pred[classes, rows], "g": self._g32[rows]},
                                share_inputs=True, share_outputs=True)[0]
            np.copyto(region, out)
        self._add_weights(worker, sl, self._weight_rows[worker::n])

    def add_weights(self, sl: tuple[slice, ...]) -> None:
        """Accumulate only the tile's Gaussian into the weights at ``sl`` (a network that updated the logits'
        region itself, :class:`~edgeseg.runtime.infer.sliding_window.AccumulatingRequest`)."""
        with self._lock:
            self._add_weights(0, sl, self._weight_rows)

    def _add_weights(self, worker: int, sl: tuple[slice, ...], rows_list: list[slice]) -> None:
        inner = sl[1:]
        for rows in rows_list:
            z = slice(sl[0].start + rows.start, sl[0].start + rows.stop)
            region = self.weights[(z, *inner)]
            buf = self._buffer(worker, region.shape)
            np.copyto(buf, region)
            request = self._request(("w", region.shape, worker))
            np.copyto(region, request.infer({"w": buf, "g": self._g32[rows]}, share_inputs=True,
                                            share_outputs=True)[0])

    def _buffer(self, worker: int, shape: tuple[int, ...]) -> np.ndarray:
        buf = self._buffers.get((worker, shape))
        if buf is None:
            buf = self._buffers[(worker, shape)] = np.empty(shape, dtype=np.float16)
        return buf

    def _request(self, key: tuple[Any, ...]) -> Any:
        request = self._requests.get(key)
        if request is None:
            if key[0] == "acc":
                kernel = _accumulate_kernel(key[1], key[2], key[3])
            else:
                kernel = _weights_kernel(key[1], key[2])
            request = self._requests[key] = kernel.create_infer_request()
        return request

    def close(self) -> None:
        """Stop the worker threads (the accumulator stays readable)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._requests.clear()
        self._buffers.clear()

    def quotient_in_place(self, slab: int = 8) -> np.ndarray:
        """Divide the logits by the weights into the accumulator itself (nnU-Net's fp16 result) and return it:
        no second (K, *shape) array (a fresh float32 one is 4x the memory of the fp16 logits, and its first
        touch alone cost 0.9 s for 51 classes on 127x103x150). The accumulator holds quotients afterwards
        (:meth:`add` must not be called again)."""
        return self._divide_into(self.logits, slab)

    def finish(self, slab: int = 8) -> np.ndarray:
        """Divide logits by weights (fp16 result, as nnU-Net) and return them as float32, slab by slab."""
        return self._divide_into(np.empty(self.logits.shape, dtype=np.float32), slab)

    def _divide_into(self, out: np.ndarray, slab: int) -> np.ndarray:
        """``out`` (the accumulator itself, or a float32 array of its shape) = logits / weights, slab by slab
        (:class:`_SlabRequests`); raises FloatingPointError on non-finite logits."""
        requests = _SlabRequests()
        for z in range(0, self.logits.shape[1], slab):
            out[:, z:z + slab] = requests.divide(self.logits[:, z:z + slab], self.weights[z:z + slab])
        return out


def _check_finite(q: np.ndarray) -> None:
    """FloatingPointError when fp16 ``q`` holds inf or NaN (exponent bits all set: one integer pass, ~5x faster
    than numpy's fp16 ``isfinite``)."""
    if ((q.view(np.uint16) & 0x7C00) == 0x7C00).any():
        raise FloatingPointError("non-finite logits after aggregation (fp16 overflow or an inf/NaN model output)")


def argmax_of_quotient(acc: np.ndarray, weights: np.ndarray, out: np.ndarray, slab: int = 4) -> np.ndarray:
    """``out[...]`` = the index of the first maximum over classes (torch's tie rule, :func:`_argmax_kernel`) of
    nnU-Net's fp16 quotient ``f16(f32(acc) / f32(weights))``, over (K, Z, ...) ``acc`` and (Z, ...) ``weights``,
    slab by slab along Z with kernels compiled for the slab's shape (:class:`_SlabRequests`; dynamic-shape kernels
    took 0.43-0.61 s for 26 classes on 160x208x256, these 0.20 s), the quotient read in place from the division's
    output. Raises FloatingPointError on non-finite logits."""
    requests = _SlabRequests()
    for z in range(0, acc.shape[1], slab):
        out[z:z + slab] = requests.argmax(requests.divide(acc[:, z:z + slab], weights[z:z + slab]))
    return out
