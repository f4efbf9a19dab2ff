"""OpenVINO engine: compile a bundle part's IR on CPU, Intel iGPU or AUTO, with precision fallback.

Precision requests:

* ``fp32``: the FP32 IR with ``INFERENCE_PRECISION_HINT=f32`` (exact parity with the FP32 network).
* ``fp16``: the FP16 IR (f16 on GPU; f32 execution on CPU).
* ``int8``: the NNCF INT8 IR; unquantized layers in bf16 where the CPU supports it, else f32.
* ``auto``: the fastest that compiles, in this order: int8+bf16, int8+f32, fp16/fp32+bf16, fp32+f32 -- among
  FP32 and the reduced precisions export's fidelity gate *passed* (bundle.json's ``precision_verdicts``; bf16
  counts as its own precision, and so does f16 inference of the FP32 model on a GPU as fp16). A precision the
  gate marked ``failed``, or one a bundle written before the gate carries no verdict for (``unchecked``), is left
  out: one line per bundle says so and how to re-export. An explicit request for a failed or unchecked precision
  is obeyed with a WARNING, and the engine (hence the run manifest) carries the verdict.

OpenVINO can refuse a combination at compile time ("No suitable implementations"), so every candidate is
compiled and run once on zeros before it is accepted; what was used is recorded (``Engine.precision``).

Accumulation in the network: where the network infers in bf16 and the part is not mirrored, the engine compiles
the network with nnU-Net's fp16 sliding-window update appended (:func:`accumulating_model`: ``acc' = f16(f32(acc)
+ f32(logits) * g)``, the tile's accumulator region in and out), so that OpenVINO adds each tile in its own
threads, fused behind the last convolution, instead of a second pass over the logits (a 51-class 128^3 INT8 tile:
0.39 s with the update against 0.36 s for the network alone and 0.15-0.18 s for the separate update). The update
is exact there: the bf16 logits times the fp16 Gaussian is exact in float32, so one rounding to fp16 is nnU-Net's
result; :func:`accumulates_exactly` reads the compiled graph to prove the logits are the convolution's own bf16
and the update a separate float32 step, and anything else gets the plain network
(``Engine.accumulates`` says which).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.bundle.schema import PRECISIONS as MODEL_PRECISIONS, Bundle, Part
from edgeseg.errors import ConfigError, InferenceError
from edgeseg.runtime.infer.devices import SUPPORTED_DEVICES, device_present, device_problem, normalize_device

log = logging.getLogger(__name__)

#: what a run may ask for: "auto", or one of the bundle's model precisions (fastest first)
PRECISIONS = ("auto", *reversed(MODEL_PRECISIONS))

_core_lock = threading.Lock()
_core: Any = None


def core() -> Any:
    """The process-wide ``openvino.Core`` (creating one is slow: plugins are discovered on first use)."""
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


def available_devices() -> list[str]:
    return list(core().available_devices)


def _supports_bf16(device: str) -> bool:
    if device != "CPU":
        return False
    try:
        return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - property missing on some builds
        return False


def candidates(part: Part, precision: str, device: str) -> list[tuple[str, str]]:
    """(model precision, inference precision hint) pairs to try, fastest first; empty when the part holds none
    of the models ``precision`` can use."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}.")
    have = set(part.models)
    gpu = device.startswith("GPU")
    bf16 = _supports_bf16(device)
    out: list[tuple[str, str]] = []
    if precision == "fp32":
        out = [("fp32", "f32")]
    elif precision == "fp16":
        out = [("fp16", "f16" if gpu else "f32"), ("fp32", "f16" if gpu else "f32")]
    elif precision == "int8":
        out = ([("int8", "bf16")] if bf16 else []) + [("int8", "f16" if gpu else "f32")]
    else:
        out = ([("int8", "bf16")] if bf16 else []) + [("int8", "f16" if gpu else "f32")]
        out += ([("fp32", "bf16")] if bf16 else []) + ([("fp16", "f16"), ("fp32", "f16")] if gpu else [])
        out += [("fp32", "f32")]
    return [c for c in out if c[0] in have]


@dataclass
class Engine:
    """One compiled model part. ``precision`` is what was used, e.g. "int8+bf16"; ``compile_s`` the time to
    compile (or load from the cache) and warm up."""

    part: Part
    compiled: Any
    device: str
    precision: str
    compile_s: float
    #: the engine's own infer request, reused tile after tile within a window; dropped by :meth:`release` with its
    #: input and output tensors (a window's are the accumulator region: 126 MB each for a 30-class 128^3 tile)
    request: Any = None
    #: export's fidelity verdict on the precision used ("passed", "failed", "unchecked"; see bundle.schema)
    verdict: str = "passed"
    #: more requests for the sliding window (:meth:`window_requests`); dropped by :meth:`release`
    spares: list[Any] = field(default_factory=list)
    #: the compiled model is the network with the window's update appended (:func:`accumulating_model`): inputs
    #: the tile and its accumulator region, output the updated region
    accumulates: bool = False
    #: held while one thread's window (:meth:`window`) or latency measurement uses the requests: a watcher with
    #: ``max_concurrent_series`` above 1 runs series in several threads over one segmenter's engines, and two
    #: windows on one request would infer into, and accumulate in, the same tensors
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.part.num_input_channels, *self.part.patch_size)

    @contextmanager
    def window(self, n: int) -> Iterator[list[Any]]:
        """:meth:`window_requests` for one sliding window, this thread's alone until the block ends (another
        thread's window of this part waits), then :meth:`release`: a part's activations and tensors are not held
        while the next part runs, nor while the labels are read out, resampled and written (about 600 MB for a
        TS-sized 128^3 network; its next window allocates them again in 0.1-0.2 s)."""
        with self.lock:
            try:
                yield self.window_requests(n)
            finally:
                self.release()

    def window_requests(self, n: int) -> list[Any]:
        """``n`` infer requests for the sliding window (used in turn: one infers while another's output is
        aggregated): the engine's own request and ``n - 1`` spares, created where :meth:`release` dropped them
        (each holds its own output buffer: 214 MB for a 51-class 128^3 fp16 tile). Use :meth:`window`, which
        holds :attr:`lock`, unless no other thread can use the engine."""
        if self.request is None:
            self.request = self.compiled.create_infer_request()
        while len(self.spares) < n - 1:
            self.spares.append(self.compiled.create_infer_request())
        return [self.request, *self.spares[:max(0, n - 1)]]

    def release(self) -> None:
        """Free the intermediate buffers and the requests with their input and output tensors (the compiled model
        stays loaded); the next window creates a request and allocates them again (0.1-0.2 s for a TS-sized 128^3
        INT8 network). Held between series and while the other parts run, a TS-sized two-part bundle's requests
        kept 330 MB of tensors nobody used (the 512x512x400 DICOM series of ``benchmarks/series_scaling.py``
        peaked at 1982 MB with them, 1789 MB without)."""
        self.request = None
        self.spares.clear()
        self.compiled.release_memory()


def compile_part(bundle: Bundle, part: Part, device: str = "CPU", precision: str = "auto",
                 threads: int | None = None, cache_dir: Path | None = None) -> Engine:
    """Compile the part's model on ``device`` with the fastest precision that works (see module docstring).

    A device edgeseg does not run on or this PC does not have, and a precision the bundle does not hold, fail the
    same way every time: :class:`ConfigError` and :class:`BundleError` (the watcher does not retry them)."""
    problem = device_problem(device)
    if problem:
        raise ConfigError(f"device {problem}: use {SUPPORTED_DEVICES}.")
    device = normalize_device(device)
    c = core()
    if not device_present(device, c.available_devices):
        raise ConfigError(
            f"Device {device} is not on this PC (OpenVINO sees: {', '.join(c.available_devices) or 'no device'}). "
            "Use device CPU, or for an Intel GPU install its driver (compute runtime); `edgeseg doctor` lists this "
            "PC's devices."
        )
    todo = candidates(part, precision, device)
    if not todo:  # the bundle lacks the model: the same BundleError as asking the bundle for it
        bundle.model_path(part, "fp32" if precision == "auto" else precision)
    if precision == "auto":  # only precisions export's fidelity gate passed
        skipped = [c for c in todo if _verdict(bundle, *c) != "passed"]
        kept = [c for c in todo if c not in skipped]
        first = todo.index(kept[0]) if kept else len(todo)
        if first:  # only what would have been tried before the first proven candidate is worth a line
            _log_auto_skipped(bundle, part, todo[:first])
        todo = kept
    elif precision != "fp32" and bundle.verdict(precision) == "failed":
        log.warning("precision %s was asked for, but export's fidelity gate marked it failed for bundle %s (%s): "
                    "results may differ from FP32 beyond the gate; the run manifest records it. Fix: use precision "
                    "auto or fp32.", precision, bundle.name, _gate_summary(bundle, precision))
    elif precision != "fp32" and bundle.verdict(precision) == "unchecked":
        log.warning("precision %s was asked for, but bundle %s carries no fidelity verdict for it (%s): nothing "
                    "shows that its results match FP32; the run manifest records it as unchecked. Fix: %s, or use "
                    "precision auto or fp32.",
                    precision, bundle.name, _unchecked_reason(bundle), REEXPORT_FIX)
    errors: list[str] = []
    for model_precision, hint in todo:
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if hint and device != "AUTO":
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        xml = bundle.model_path(part, model_precision)
        t0 = time.perf_counter()
        try:
            compiled = (_compile_accumulating(xml, part, device, config)
                        if hint == "bf16" and not _mirrored(part) else None)
            accumulates = compiled is not None
            if compiled is None:
                compiled = _read_and_compile(xml, model_precision, device, config)
            # one inference on zeros: proves this precision runs here and pays the one-off kernel set-up now; the
            # request is kept until the engine's first release (after a window or a latency measurement)
            request = compiled.create_infer_request()
            request.infer(zero_inputs(compiled))
        except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.info("compile part=%s precision=%s hint=%s device=%s failed: %s", part.name, model_precision,
                     hint, device, msg)
            errors.append(f"{model_precision}+{hint}: {msg}")
            continue
        dt = time.perf_counter() - t0
        used = f"{model_precision}+{hint}" if hint else model_precision
        log.info("compiled part=%s device=%s precision=%s in %.1fs", part.name, device, used, dt)
        return Engine(part, compiled, device, used, dt, request, _verdict(bundle, model_precision, hint),
                      accumulates=accumulates)
    raise InferenceError(
        f"OpenVINO could not compile part '{part.name}' on {device} with precision {precision}: "
        f"{'; '.join(errors)}. Try --precision fp32 or --device CPU."
    )


#: how to get a verdict for a bundle that has none (the fix in the lines below)
REEXPORT_FIX = ("re-export the bundle with this edgeseg (`edgeseg export ...`: its validation records each "
                "precision's verdict in bundle.json)")

#: bundles whose "auto left out an unchecked precision" line was logged (once per bundle and process)
_told_unchecked: set[str] = set()


def _read_and_compile(xml: Path, model_precision: str, device: str, config: dict[str, Any]) -> Any:
    """Compile ``xml`` with its logits leaving the network as bf16 where the network computes them in bf16 (the
    bf16 inference hint), else as fp16 (INT8/FP16 models) or float32 (FP32).

    Why bf16: under the bf16 hint the last convolution writes bf16, so fp16 logits only cost a conversion of
    every logit (a 51-class 128^3 INT8 tile: 0.44 s with fp16 logits, 0.37 s with bf16, the same values; see
    :func:`_logits_type`), and bf16 values are exact in fp16 and float32, so the aggregation gets the same
    numbers. Whether the compiled graph really produces bf16 is read from its runtime model
    (:func:`produces_bf16`); where it does not, the model is compiled again with fp16 logits."""
    hint = config.get("INFERENCE_PRECISION_HINT")
    wanted = _logits_type(model_precision, hint)
    compiled = core().compile_model(_with_logits_type(xml, wanted), device, config)
    if wanted == "bf16" and not produces_bf16(compiled):
        log.info("compile %s: the logits are not computed in bf16 on %s: compiled again with %s logits", xml.name,
                 device, _logits_type(model_precision, None) or "float32")
        compiled = core().compile_model(_with_logits_type(xml, _logits_type(model_precision, None)), device, config)
    return compiled


def _mirrored(part: Part) -> bool:
    """Whether the part's window averages mirrored predictions (before weighting: no in-network update)."""
    return bool(part.use_mirroring and part.mirror_axes)


def accumulating_model(xml: Path, gaussian: np.ndarray) -> Any:
    """The network of ``xml`` with nnU-Net's fp16 update of one tile appended: inputs the tile (1, C, *patch) and
    ``acc`` (K, *patch) fp16, the tile's region of the window's accumulator; output ``f16(f32(acc) + f32(logits) *
    g)`` (K, *patch) fp16, where g is ``gaussian`` (the window's importance map, or ones) as fp16 values."""
    import openvino as ov
    import openvino.opset13 as ops

    model = core().read_model(str(xml))
    tile = model.get_parameters()[0]
    logits = model.get_results()[0].input_value(0)
    shape = [d.get_length() for d in logits.get_partial_shape()][1:]  # (K, *patch)
    acc = ops.parameter(shape, ov.Type.f16, name="acc")
    g32 = np.ascontiguousarray(gaussian, dtype=np.float16).astype(np.float32)
    pred = ops.convert(ops.reshape(logits, ops.constant(np.array(shape, np.int64), name="edgeseg_update_shape"),
                                   False, name="edgeseg_update_logits"), ov.Type.f32, name="edgeseg_update_pred")
    weighted = ops.multiply(pred, ops.constant(g32, name="edgeseg_update_gaussian"), name="edgeseg_update_weighted")
    total = ops.add(ops.convert(acc, ov.Type.f32, name="edgeseg_update_acc"), weighted, name="edgeseg_update_sum")
    for node in (pred, weighted, total):  # arithmetic in float32 whatever the inference precision
        node.get_rt_info()["disable_fp16_compression_0"] = ""
    out = ops.result(ops.convert(total, ov.Type.f16, name="edgeseg_update"), name="edgeseg_update_result")
    # every node named: OpenVINO's model cache hashes the graph with its names, and generated names (a process-wide
    # counter) would give the same model a new cache entry in every process that built other nodes first
    return ov.Model([out], [tile, acc], f"{model.get_friendly_name()}_accumulating")


#: layers of a runtime model that only move or re-shape values
_LAYOUT = ("Reorder", "Reshape")


def _exec_info(node: Any) -> tuple[str, str]:
    """A runtime-model node's layer type and output precision (lower case), from OpenVINO's execution info."""
    info = node.get_rt_info()
    return str(info["layerType"].astype(str)), str(info["outputPrecisions"].astype(str)).lower()


def _producer(node: Any, skip: tuple[str, ...] = _LAYOUT) -> Any:
    """The first node at or before ``node`` whose layer type is not in ``skip`` (default: the layout-only layers,
    :data:`_LAYOUT`), following first inputs; ValueError after eight."""
    for _ in range(8):
        if _exec_info(node)[0] not in skip:
            return node
        node = node.input_value(0).get_node()
    raise ValueError("layout layers do not end")


def accumulates_exactly(compiled: Any) -> bool:
    """True when the compiled :func:`accumulating_model` computes nnU-Net's update exactly: its output comes from
    one element-wise layer (a Subgraph, Eltwise or Convert writing fp16) whose inputs are the ``acc`` input, a
    constant (the Gaussian) and a computing layer (a convolution, not a conversion) writing bf16 -- the logits
    rounded to bf16 by the network itself, as :func:`produces_bf16` requires of plain bf16 logits. False for any
    other shape of the graph (e.g. the update fused into the convolution, or logits computed in float32)."""
    try:
        update = _producer(compiled.get_runtime_model().get_results()[0].input_value(0).get_node())
        layer, precision = _exec_info(update)
        if layer not in ("Subgraph", "Eltwise", "Convert") or precision != "f16":
            return False
        kinds = []
        for i in range(update.get_input_size()):
            source = _producer(update.input_value(i).get_node())
            layer, precision = _exec_info(source)
            if layer == "Input" and source.get_friendly_name() == "acc":
                kinds.append("acc")
            elif layer == "Const":
                kinds.append("const")
            elif layer not in (*_CONVERSIONS, "Input", "Eltwise") and precision == "bf16":
                kinds.append("logits")
            else:
                return False
        return sorted(kinds) in (["acc", "const", "logits"], ["acc", "logits"])  # no const: g of ones folded
    except Exception:  # noqa: BLE001 - a plugin without execution info: not proven
        return False


def _compile_accumulating(xml: Path, part: Part, device: str, config: dict[str, Any]) -> Any | None:
    """The part's :func:`accumulating_model` compiled, or None where it does not compile or
    :func:`accumulates_exactly` does not hold (logged; the caller compiles the plain network)."""
    from edgeseg.runtime.infer.tiling import gaussian_importance

    patch = tuple(part.patch_size)
    g = gaussian_importance(patch) if part.use_gaussian else np.ones(patch, np.float16)
    try:
        compiled = core().compile_model(accumulating_model(xml, g), device, config)
    except Exception as err:  # noqa: BLE001 - the plain network may still compile with this precision
        log.info("compile %s with the window's update inside failed on %s (%s): the plain network is used",
                 xml.name, device, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        return None
    if accumulates_exactly(compiled):
        return compiled
    log.info("compile %s: the window's update cannot run inside the network exactly on %s (the compiled graph "
             "does not keep the logits as the network's bf16): the plain network and the separate update are used",
             xml.name, device)
    return None


def zero_inputs(compiled: Any) -> dict[int, np.ndarray]:
    """Zeros for every input of a compiled model, of its shape and element type."""
    return {i: np.zeros(tuple(port.get_shape()), dtype=port.get_element_type().to_dtype())
            for i, port in enumerate(compiled.inputs)}


def _logits_type(model_precision: str, hint: str | None) -> str | None:
    """The element type the logits leave the network in: bf16 under the bf16 hint, fp16 for INT8/FP16 models
    (half the output memory of float32 per request: a 51-class 128^3 tile is 428 MB in f32; an INT8/FP16
    network's logits carry no more precision than that anyway), None (the model's float32) for FP32."""
    if hint == "bf16":
        return "bf16"
    return None if model_precision == "fp32" else "f16"


def _with_logits_type(xml: Path, logits: str | None) -> Any:
    model = core().read_model(str(xml))
    if logits is None:
        return model
    import openvino as ov

    ppp = ov.preprocess.PrePostProcessor(model)
    ppp.output(0).tensor().set_element_type(ov.Type.bf16 if logits == "bf16" else ov.Type.f16)
    return ppp.build()


#: execution-graph layers that convert what another layer computed (a bf16 output of theirs may be a rounding)
_CONVERSIONS = ("Subgraph", "Convert")


def produces_bf16(compiled: Any) -> bool:
    """True when the layer that computes the compiled model's first output writes bf16 itself: past the Reorder
    nodes in front of the Result (layout changes), the first layer of the runtime model (OpenVINO's execution
    info: ``layerType``, ``outputPrecisions``) is a computing one (a convolution, not a conversion of another
    layer's float32: :data:`_CONVERSIONS`) and its output precision is bf16. False otherwise, or when the
    information is missing."""
    try:
        layer, precision = _exec_info(_producer(compiled.get_runtime_model().get_results()[0].input_value(0)
                                                .get_node(), ("Reorder",)))
    except Exception:  # noqa: BLE001 - a plugin without execution info: not proven
        return False
    return layer not in _CONVERSIONS and precision == "bf16"


def compile_model(xml: Path, model_precision: str, device: str = "CPU", threads: int | None = None) -> tuple[Any, str]:
    """Compile one IR file as :func:`compile_part` compiles it, with the first (fastest) inference precision hint
    :func:`candidates` would try for ``model_precision`` ("fp32", "fp16", "int8"); no fallback, no warm-up.
    Returns (the compiled model, the precision used, e.g. "int8+bf16"). For benchmarks and tools."""
    gpu = device.startswith("GPU")
    if model_precision == "int8" and _supports_bf16(device):
        hint = "bf16"
    else:
        hint = "f16" if gpu and model_precision != "fp32" else "f32"
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return _read_and_compile(Path(xml), model_precision, device, config), f"{model_precision}+{hint}"


def _verdict(bundle: Bundle, model_precision: str, hint: str) -> str:
    """Export's verdict on running ``model_precision`` with the inference precision ``hint``: the worse of the
    model's and, for reduced-precision inference of an FP32/FP16 model, that precision's (bf16; f16 on a GPU
    counts as fp16)."""
    order = {"failed": 0, "unchecked": 1, "passed": 2}
    verdicts = [bundle.verdict(model_precision)]
    if model_precision != "int8" and hint in ("bf16", "f16"):
        verdicts.append(bundle.verdict("bf16" if hint == "bf16" else "fp16"))
    return min(verdicts, key=lambda v: order.get(v, 1))


def _unchecked_reason(bundle: Bundle) -> str:
    return ("bundle.json has no precision_verdicts: it was written before export's fidelity gate"
            if not bundle.precision_verdicts else "export recorded no validation of it")


def _log_auto_skipped(bundle: Bundle, part: Part, skipped: list[tuple[str, str]]) -> None:
    """What ``auto`` left out ahead of what it tries first: failed precisions at INFO (export's gate said so at
    WARNING); those of a bundle written before the gate once per bundle and process at WARNING (an admin can
    re-export to get the faster precision back); others without a verdict (export did not validate them) at INFO."""
    failed = [f"{m}+{h}" for m, h in skipped if _verdict(bundle, m, h) == "failed"]
    unchecked = [f"{m}+{h}" for m, h in skipped if _verdict(bundle, m, h) == "unchecked"]
    if failed:
        log.info("precision auto: part=%s leaves out %s (failed export's fidelity gate, bundle.json "
                 "precision_verdicts)", part.name, ", ".join(failed))
    if not unchecked:
        return
    key = f"{bundle.path}|{bundle.name}"
    if bundle.precision_verdicts or key in _told_unchecked:
        log.info("precision auto: part=%s leaves out %s (no fidelity verdict: %s)", part.name, ", ".join(unchecked),
                 _unchecked_reason(bundle))
        return
    _told_unchecked.add(key)
    log.warning("precision auto: bundle %s predates export's fidelity gate (bundle.json has no precision_verdicts), "
                "so auto leaves out %s and runs FP32: nothing shows that a reduced precision matches FP32 for this "
                "model. Fix: %s; precision fp32 runs the same without this line.", bundle.name, ", ".join(unchecked),
                REEXPORT_FIX)


def _gate_summary(bundle: Bundle, precision: str) -> str:
    record = bundle.precision_verdicts.get(precision) or {}
    worst = record.get("worst") or {}
    return (f"lowest structure Dice {record.get('min_dice')} ({worst.get('structure', '?')}), mean "
            f"{record.get('mean_dice')}, gate {record.get('gate')}")


def measure_tile_latency(bundle: Bundle, part: Part, precision: str = "auto", device: str = "CPU",
                         threads: int | None = None, cache_dir: Path | None = None, repeats: int = 3) -> float:
    """Median seconds per tile of the part compiled here (export's report; a planner without a segmenter)."""
    return engine_tile_latency(compile_part(bundle, part, device, precision, threads, cache_dir), repeats)


def engine_tile_latency(engine: Engine, repeats: int = 3) -> float:
    """Median seconds per tile of a compiled ``engine`` on this machine (the time-budget planner's latency; the
    segmenter measures the engine it keeps, so a part is compiled once, not once more for the measurement).
    Its working memory is released after."""
    inputs = zero_inputs(engine.compiled)  # with the accumulator region where the engine accumulates: it counts
    inputs[0] = np.random.default_rng(0).standard_normal(engine.input_shape).astype(np.float32)
    times = []
    with engine.window(1) as (request,):  # not beside another thread's window (nor timed against it)
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            request.infer(inputs, share_inputs=True, share_outputs=True)
            times.append(time.perf_counter() - t0)
        del request
    return float(np.median(times))
