"""Per-layer quantization sensitivity: which convolutions of an INT8 model add the most error.

The fidelity gate's ``float_layers`` remedy keeps the most sensitive convolutions in floating point (NNCF's
``ignored_scope``). This pass finds them, cheaply: the FP32 model and the fully quantized INT8 model run on the
same few calibration patches, with every quantized convolution's *input* (the tensor before its activation
FakeQuantize) and *output* added as model outputs. For each convolution, with ``r = sum (f - q)^2 / sum f^2`` the
relative quantization noise of a tensor (``f`` FP32, ``q`` INT8; both less each channel's mean over the patch, as
the instance normalization after every nnU-Net convolution removes it):

* ``added_noise`` = ``r_out - r_in``: the relative noise the layer adds (its activation and weight quantization,
  and what it makes of the noise it receives) -- the score the layers are ranked by, highest first. Relative noise
  travels on to the logits roughly in proportion, so this approximates the layer's share of the logits' error;
* ``sqnr_in_db``, ``sqnr_out_db`` (10 log10 1/r, capped at ``SQNR_CAP_DB`` for a clean tensor such as the
  network's input) and ``drop_db`` = their difference, for reading. The dB drop is not the ranking: it puts the
  first convolution on top merely because its input is clean.

Both models run in f32 inference (INT8 layers as INT8), deterministic for
the same patches. To keep memory and time low the models are reshaped to half the patch size on every axis where
the network accepts it (it is fully convolutional: the patch is only what it was trained on) and the patches are
centre-cropped to it; the added outputs are evaluated in groups of at most ``group_bytes`` per model.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from edgeseg.export.budget import NO_DEADLINE, Deadline

log = logging.getLogger(__name__)

CONV_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData")
#: the operations whose (first) input NNCF quantizes and ignored_scope can keep in float: the convolutions and the
#: instance normalizations (MVN) after them (NNCF's performance preset quantizes an MVN's input too)
QUANTIZED_TYPES = (*CONV_TYPES, "MVN")
#: a tensor whose quantization noise is below 1e-6 of its signal counts as clean
SQNR_CAP_DB = 60.0


@dataclass(frozen=True)
class LayerScore:
    """One quantized convolution's sensitivity (module docstring)."""

    name: str
    type: str
    #: where it is, in names that survive a re-conversion: a convolution's own (from the ONNX graph; a transposed
    #: one's, a per-process counter, by its bias's ONNX node: :func:`_conv_name`); for an OpenVINO-made operation
    #: (an MVN's name is a per-process counter, e.g. "MVN_183") the convolution feeding it
    where: str
    sqnr_in_db: float
    sqnr_out_db: float
    drop_db: float
    added_noise: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sqnr_db(signal: float, noise: float) -> float:
    if noise <= 0.0 or signal <= 0.0 or signal / noise > 10 ** (SQNR_CAP_DB / 10):
        return SQNR_CAP_DB
    return 10.0 * math.log10(signal / noise)


def quantized_operations(int8_model: Any) -> list[Any]:
    """The convolutions and normalizations (:data:`QUANTIZED_TYPES`) of an NNCF-quantized ``openvino.Model`` whose
    input is quantized (a FakeQuantize feeds input 0), in topological order."""
    out = []
    for op in int8_model.get_ordered_ops():
        if op.get_type_name() in QUANTIZED_TYPES and \
                op.input(0).get_source_output().get_node().get_type_name() == "FakeQuantize":
            out.append(op)
    return out


def _conv_name(op: Any) -> str:
    """A convolution's name that survives a re-conversion: its own where the ONNX frontend gave it one (a Conv's is
    "<ONNX node>/WithoutBiases"). A ConvTranspose becomes a ConvolutionBackpropData named by a per-process counter
    ("ConvolutionBackpropData_335"): then the bias Add after it, which carries the ONNX node's name, or, without a
    bias (nnU-Net's transposed convolutions), its weights' name (the torch parameter's,
    "members.0.decoder.transpconvs.1.weight")."""
    name = str(op.get_friendly_name())
    if not _generated(op):
        return name
    consumers = [t.get_node() for t in op.output(0).get_target_inputs()]
    if len(consumers) == 1 and consumers[0].get_type_name() == "Add" and not _generated(consumers[0]):
        return str(consumers[0].get_friendly_name())
    weights = op.input(1).get_source_output().get_node()
    for _ in range(4):  # the weights' Constant, perhaps through a Convert (compressed weights)
        if weights.get_type_name() == "Constant" or weights.get_input_size() == 0:
            break
        weights = weights.input(0).get_source_output().get_node()
    if weights.get_type_name() == "Constant" and not _generated(weights):
        return str(weights.get_friendly_name())
    return name


def _generated(op: Any) -> bool:
    """Whether an OpenVINO operation's name is the per-process "<Type>_<counter>" OpenVINO gives unnamed ones."""
    return re.fullmatch(rf"{re.escape(op.get_type_name())}_\d+", str(op.get_friendly_name())) is not None


def _where(op: Any) -> str:
    """:attr:`LayerScore.where` of an FP32 model's operation."""
    if op.get_type_name() in CONV_TYPES:
        return _conv_name(op)
    node = op
    for _ in range(8):  # MVN <- Add (bias) <- Convolution, perhaps through a Reshape or Convert
        node = node.input(0).get_source_output().get_node()
        if node.get_type_name() in CONV_TYPES:
            return f"after {_conv_name(node)}"
        if node.get_input_size() == 0:
            break
    return str(op.get_friendly_name())


def _centred(x: np.ndarray) -> np.ndarray:
    """``x`` (1, C, ...) less each channel's mean: the instance normalization after each nnU-Net convolution
    removes it, so a channel's offset is neither signal nor noise for the next layer."""
    return x - x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)


def _smaller(shape: Sequence[int]) -> list[int]:
    return [d // 2 if d % 32 == 0 else d for d in shape]


def _crop(patch: np.ndarray, spatial: Sequence[int]) -> np.ndarray:
    start = [(s - t) // 2 for s, t in zip(patch.shape[2:], spatial)]
    index = (slice(None), slice(None), *(slice(a, a + t) for a, t in zip(start, spatial)))
    return np.ascontiguousarray(patch[index], dtype=np.float32)


def _nbytes(port: Any) -> int:
    shape = port.get_partial_shape()
    return 4 * int(np.prod([d.get_length() for d in shape])) if shape.is_static else 1 << 40


def rank_layers(fp32_model: Any, int8_model: Any, patches: Sequence[np.ndarray], *,
                deadline: Deadline = NO_DEADLINE, reduce: bool = True,
                group_bytes: int = 768 << 20) -> list[LayerScore]:
    """The quantized operations of ``int8_model`` (:func:`quantized_operations`; NNCF's quantization of
    ``fp32_model``; names are the FP32 model's) ranked by ``added_noise``, highest first (ties: network order).
    ``patches``: (1, C, *patch) float32 calibration patches.
    Raises :class:`~edgeseg.export.budget.BudgetSpent` when ``deadline`` passes."""
    from edgeseg.runtime.infer.engine import core

    t0 = time.perf_counter()
    fp32, int8 = fp32_model.clone(), int8_model.clone()
    full = [int(d.get_length()) for d in fp32.input(0).get_partial_shape()]
    spatial = full[2:]
    if reduce and _smaller(spatial) != spatial:
        small = [*full[:2], *_smaller(spatial)]
        try:
            for m in (fp32, int8):
                m.reshape({m.input(0).get_any_name(): small})
            spatial = small[2:]
        except Exception as err:  # noqa: BLE001 - the network refuses the smaller shape: full patches
            log.info("sensitivity pass: the network keeps its patch size (%s)", str(err).splitlines()[0][:200])
            fp32, int8 = fp32_model.clone(), int8_model.clone()
    by_name = {op.get_friendly_name(): op for op in fp32.get_ordered_ops() if op.get_type_name() in QUANTIZED_TYPES}
    layers = []
    for op in quantized_operations(int8):
        twin = by_name.get(op.get_friendly_name())
        if twin is None:
            continue
        fq = op.input(0).get_source_output().get_node()
        layers.append((op.get_friendly_name(), op.get_type_name(), _where(twin),
                       (twin.input(0).get_source_output(), twin.output(0)),
                       (fq.input(0).get_source_output(), op.output(0))))
    crops = [_crop(p, spatial) for p in patches]
    sums = {name: np.zeros(4) for name, *_ in layers}  # signal_in, noise_in, signal_out, noise_out
    groups: list[list[Any]] = [[]]
    used = 0
    for layer in layers:
        size = _nbytes(layer[3][0]) + _nbytes(layer[3][1])
        if groups[-1] and used + size > group_bytes:
            groups.append([])
            used = 0
        groups[-1].append(layer)
        used += size
    c = core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    for group in groups:
        if not group:
            continue
        compiled = []
        for which, model in ((3, fp32), (4, int8)):
            probe = model.clone()
            keys = sorted({(port.get_node().get_friendly_name(), port.get_index())
                           for layer in group for port in layer[which]})
            probe.add_outputs([_port_in(probe, name, index) for name, index in keys])
            # each model output's position, by the tensor its Result reads (an added port may already be one)
            position: dict[tuple[str, int], int] = {}
            for i, result in enumerate(probe.outputs):
                source = result.get_node().input(0).get_source_output()
                position.setdefault((source.get_node().get_friendly_name(), source.get_index()), i)
            compiled.append((c.compile_model(probe, "CPU", config), position))
        for patch in crops:
            deadline.check("the sensitivity pass")
            (ref, ref_at), (quant, quant_at) = ((model({0: patch}).to_tuple(), at) for model, at in compiled)
            for name, _, _, ref_ports, q_ports in group:
                acc = sums[name]
                for slot, (rp, qp) in enumerate(zip(ref_ports, q_ports)):
                    f = np.asarray(ref[ref_at[(rp.get_node().get_friendly_name(), rp.get_index())]], np.float64)
                    q = np.asarray(quant[quant_at[(qp.get_node().get_friendly_name(), qp.get_index())]], np.float64)
                    signal, noise = _centred(f), _centred(f - q)
                    acc[2 * slot] += float(np.sum(signal * signal))
                    acc[2 * slot + 1] += float(np.sum(noise * noise))
        del compiled
    scores = []
    for name, kind, where, *_ in layers:
        s_in, n_in, s_out, n_out = sums[name]
        sin, sout = _sqnr_db(s_in, n_in), _sqnr_db(s_out, n_out)
        added = (n_out / s_out if s_out > 0 else 0.0) - (n_in / s_in if s_in > 0 else 0.0)
        scores.append(LayerScore(name, kind, where, round(sin, 3), round(sout, 3), round(sin - sout, 3),
                                 float(f"{added:.6g}")))
    order = {name: i for i, (name, *_) in enumerate(layers)}
    scores.sort(key=lambda s: (-s.added_noise, order[s.name]))
    log.info("sensitivity pass: %d quantized operations ranked on %d patch(es) of %s in %.1fs; most sensitive: %s",
             len(scores), len(crops), spatial, time.perf_counter() - t0,
             ", ".join(f"{s.name} (+{s.added_noise:.2g})" for s in scores[:4]))
    return scores


def _port_in(model: Any, name: str, index: int) -> Any:
    for op in model.get_ops():
        if op.get_friendly_name() == name:
            return op.output(index)
    raise KeyError(name)
