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
from functools import lru_cache
from typing import Any, Sequence

import numpy as np


@lru_cache(maxsize=8)
def _accumulate_kernel(num_outputs: int, patch: tuple[int, ...], gaussian_key: bytes, pred_type: str) -> Any:
    import openvino as ov
    import openvino.opset13 as ops

    from edgeseg.runtime.infer.engine import core

    g16 = np.frombuffer(gaussian_key, dtype=np.float16).reshape(patch)
    acc = ops.parameter([num_outputs, *patch], ov.Type.f16, name="acc")
    pred = ops.parameter([num_outputs, *patch], ov.Type.f16 if pred_type == "f16" else ov.Type.f32, name="pred")
    w = ops.parameter(list(patch), ov.Type.f16, name="w")
    g = ops.convert(ops.constant(g16), ov.Type.f32)
    pred32 = ops.convert(pred, ov.Type.f32) if pred_type != "f32" else pred
    new_acc = ops.convert(ops.add(ops.convert(acc, ov.Type.f32), ops.multiply(pred32, g)), ov.Type.f16)
    new_w = ops.convert(ops.add(ops.convert(w, ov.Type.f32), g), ov.Type.f16)
    model = ov.Model([new_acc, new_w], [acc, pred, w], "nnunet_fp16_accumulate")
    return core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})


@lru_cache(maxsize=2)
def _divide_kernel() -> Any:
    """q = f16(f32(acc) / f32(w)). The rounding to fp16 happens at the output: with the f32 precision hint the
    CPU plugin computes any intermediate f16 tensor in f32, so rounding inside one graph would be lost."""
    import openvino as ov
    import openvino.opset13 as ops

    from edgeseg.runtime.infer.engine import core

    acc = ops.parameter(ov.PartialShape([-1, -1, -1, -1]), ov.Type.f16, name="acc")
    w = ops.parameter(ov.PartialShape([-1, -1, -1]), ov.Type.f16, name="w")
    q = ops.convert(ops.divide(ops.convert(acc, ov.Type.f32), ops.convert(w, ov.Type.f32)), ov.Type.f16)
    model = ov.Model([q], [acc, w], "nnunet_fp16_divide")
    return core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


@lru_cache(maxsize=2)
def _argmax_kernel() -> Any:
    """Index of the first maximum over axis 0 (torch.argmax's tie rule: a stable TopK with k=1)."""
    import openvino as ov
    import openvino.opset13 as ops

    from edgeseg.runtime.infer.engine import core

    q = ops.parameter(ov.PartialShape([-1, -1, -1, -1]), ov.Type.f16, name="q")
    top = ops.topk(ops.convert(q, ov.Type.f32), 1, 0, "max", "value", "i32", stable=True)
    model = ov.Model([top.output(1)], [q], "argmax_first")
    return core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


class Fp16Aggregator:
    """(K, *shape) fp16 logits and (*shape) fp16 weights, updated tile by tile with nnU-Net's rounding.

    ``add`` is thread-safe (OpenVINO callbacks call it); ``finish`` returns float32 logits holding exactly
    nnU-Net's fp16 values (fp16 -> fp32 is exact), so a float32 argmax equals nnU-Net's fp16 argmax.
    """

    def __init__(self, num_outputs: int, shape: Sequence[int], patch: Sequence[int], gaussian: np.ndarray) -> None:
        self.logits = np.zeros((num_outputs, *shape), dtype=np.float16)
        self.weights = np.zeros(tuple(shape), dtype=np.float16)
        self.patch = tuple(int(p) for p in patch)
        self._gaussian = np.ascontiguousarray(gaussian, dtype=np.float16).tobytes()
        self._num_outputs = num_outputs
        self._requests: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, sl: tuple[slice, ...], pred: np.ndarray) -> None:
        """Accumulate one tile's (K, *patch) prediction (float32, or float16 from an INT8/FP16 network; not
        yet weighted) at ``sl``. Inputs and outputs are shared with OpenVINO, not copied."""
        region = (slice(None), *sl)
        kind = "f16" if pred.dtype == np.float16 else "f32"
        with self._lock:
            request = self._requests.get(kind)
            if request is None:
                kernel = _accumulate_kernel(self._num_outputs, self.patch, self._gaussian, kind)
                request = self._requests[kind] = kernel.create_infer_request()
            out = request.infer({
                "acc": np.ascontiguousarray(self.logits[region]),
                "pred": np.ascontiguousarray(pred, dtype=np.float16 if kind == "f16" else np.float32),
                "w": np.ascontiguousarray(self.weights[sl]),
            }, share_inputs=True, share_outputs=True)
            self.logits[region] = out[0]
            self.weights[sl] = out[1]

    def finish(self, slab: int = 8) -> np.ndarray:
        """Divide logits by weights (fp16 result, as nnU-Net) and return them as float32, slab by slab."""
        out = np.empty(self.logits.shape, dtype=np.float32)
        for z in range(0, self.logits.shape[1], slab):
            out[:, z:z + slab] = divide_fp16(self.logits[:, z:z + slab], self.weights[z:z + slab])
        return out


def divide_fp16(acc: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``f16(f32(acc) / f32(weights))`` (nnU-Net's fp16 division); raises on non-finite results."""
    request = _divide_kernel().create_infer_request()
    res = np.array(request.infer({"acc": np.ascontiguousarray(acc), "w": np.ascontiguousarray(weights)},
                                 share_inputs=True)[0])
    if not np.isfinite(res).all():
        raise FloatingPointError("non-finite logits after aggregation (fp16 overflow or an inf/NaN model output)")
    return res


def argmax_first(logits16: np.ndarray) -> np.ndarray:
    """argmax over axis 0 of fp16 logits, first maximum wins (as torch/numpy); int32."""
    request = _argmax_kernel().create_infer_request()
    return np.array(request.infer({"q": np.ascontiguousarray(logits16, dtype=np.float16)}, share_inputs=True)[0])[0]
