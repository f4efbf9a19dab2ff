"""The sliding window's overlap of inference and aggregation changes nothing: the chunked, threaded fp16
aggregation equals nnU-Net's arithmetic done directly, and OpenVINO requests used in turn (ping-pong) give the
same logits as running the model tile after tile."""
from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime.infer import aggregate
from edgeseg.runtime.infer.aggregate import BF16_BITS, Fp16Aggregator, as_float32, chunks, logits_of
from edgeseg.runtime.infer.sliding_window import predict_logits, tile_slicers
from edgeseg.runtime.infer.tiling import gaussian_importance


def _nnunet_accumulate(num_outputs, shape, patch, preds):
    """nnU-Net's per-tile update written out in numpy (slow fp16, fine at this size):
    ``prediction *= gaussian`` in float32, then ``logits[sl] += prediction`` and ``weights[sl] += gaussian``
    in fp16 (computed in float32, rounded once)."""
    g32 = gaussian_importance(patch).astype(np.float32)
    logits = np.zeros((num_outputs, *shape), np.float16)
    weights = np.zeros(shape, np.float16)
    for sl, pred in preds:
        region = (slice(None), *sl)
        weighted = pred.astype(np.float32) * g32
        logits[region] = (logits[region].astype(np.float32) + weighted).astype(np.float16)
        weights[sl] = (weights[sl].astype(np.float32) + g32).astype(np.float16)
    return logits, weights


def test_chunks_cover_every_class_and_row_once():
    for num_outputs, patch, target in [(51, (128, 128, 128), None), (4, (8, 16, 12), 100), (7, (5, 6, 7), 90),
                                       (3, (8, 16, 12), 10_000)]:
        cover = np.zeros((num_outputs, patch[0]), int)
        for classes, rows in chunks(num_outputs, patch, target):
            cover[classes, rows] += 1
        assert (cover == 1).all()
    # a 128^3 class is cut into slabs of rows; small patches keep several classes per piece
    assert len(chunks(51, (128, 128, 128))) == 51 * 4
    assert len(chunks(30, (16, 80, 96))) < 30


def _aggregate(preds, k, shape, patch, threads):
    agg = Fp16Aggregator(k, shape, patch, gaussian_importance(patch), threads=threads)
    try:
        for sl, pred in preds:
            agg.add(sl, pred)
    finally:
        agg.close()
    return agg


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("target", [60, 500])
def test_chunked_threaded_aggregation_changes_nothing(monkeypatch, threads, dtype, target):
    """Whatever the chunk size and thread count: bit for bit the one-piece, one-thread aggregation, and bit for
    bit nnU-Net's fp16 update (float32 predictions too: the product is rounded before the sum, as torch does)."""
    patch, shape, k = (8, 6, 10), (13, 9, 17), 5
    rng = np.random.default_rng(7)
    preds = [(sl, (rng.standard_normal((k, *patch)) * 20).astype(dtype)) for sl in tile_slicers(shape, patch, 0.5)]
    whole = _aggregate(preds, k, shape, patch, threads=1)  # one chunk: the default target covers a tile here
    assert len(chunks(k, patch)) == 1
    monkeypatch.setattr(aggregate, "CHUNK_ELEMENTS", target)
    assert len(chunks(k, patch)) > 1
    agg = _aggregate(preds, k, shape, patch, threads)
    np.testing.assert_array_equal(agg.weights, whole.weights)
    np.testing.assert_array_equal(agg.logits, whole.logits)
    logits, weights = _nnunet_accumulate(k, shape, patch, preds)
    np.testing.assert_array_equal(agg.weights, weights)
    np.testing.assert_array_equal(agg.logits, logits)


def test_float32_predictions_round_the_product_as_torch_does():
    """An FMA (one rounding) and torch's multiply-then-add differ in the last fp16 bit on about 1 in 10^4 values:
    these are such values (found with OpenVINO's fused kernel)."""
    patch = (1, 1, 4)
    g = np.full(patch, 0.14001465, np.float16)
    agg = Fp16Aggregator(1, patch, patch, g, threads=1)
    agg.logits[...] = np.float16(3.2265625)
    agg.add((slice(0, 1), slice(0, 1), slice(0, 4)), np.full((1, *patch), -5.7541423, np.float32))
    expected = np.float16(np.float32(3.2265625) + np.float32(-5.7541423) * np.float32(g.flat[0]))
    assert expected == np.float16(2.422)  # the fused multiply-add gives 2.42
    assert (agg.logits == expected).all()


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """bf16 bits of float32 ``values`` (truncated: any bf16 value will do)."""
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def test_bf16_predictions_aggregate_as_their_float32_values():
    """bf16 logits (a network inferring in bf16) added as their bits equal the same values added as float32, and
    nnU-Net's fp16 update of those values: the widening is exact and so is the product with the fp16 weight."""
    patch, shape, k = (8, 6, 10), (13, 9, 17), 5
    rng = np.random.default_rng(8)
    bits = [(sl, _bf16_bits(rng.standard_normal((k, *patch)) * 20)) for sl in tile_slicers(shape, patch, 0.5)]
    values = [(sl, as_float32(b)) for sl, b in bits]
    assert bits[0][1].dtype == BF16_BITS and values[0][1].dtype == np.float32
    np.testing.assert_array_equal(values[0][1], (bits[0][1].astype(np.uint32) << 16).view(np.float32))
    from_bits = _aggregate(bits, k, shape, patch, threads=2)
    from_values = _aggregate(values, k, shape, patch, threads=1)
    np.testing.assert_array_equal(from_bits.logits, from_values.logits)
    np.testing.assert_array_equal(from_bits.weights, from_values.weights)
    logits, weights = _nnunet_accumulate(k, shape, patch, values)
    np.testing.assert_array_equal(from_bits.logits, logits)
    assert np.abs(logits).max() > 1  # real sums, not zeros


def test_logits_of_reads_a_bf16_tensor_as_bits_in_place():
    import openvino as ov

    bits = _bf16_bits(np.array([1.5, -2.25, 3.0e4, 1e-3], np.float32))
    tensor = ov.Tensor(bits, ov.Shape([4]), ov.Type.bf16)
    assert tensor.data.dtype == np.float16  # OpenVINO's own view: the bits misread as fp16
    got = logits_of(tensor)
    assert got.dtype == BF16_BITS and np.shares_memory(got, tensor.data)
    np.testing.assert_array_equal(as_float32(got), [1.5, -2.25, 29952.0, 0.00099945068359375])
    f16 = ov.Tensor(np.ones(3, np.float16))
    assert logits_of(f16).dtype == np.float16


def _small_openvino_model(channels_out=3):
    """A fixed random 3x3x3 convolution as an OpenVINO model (1, 1, 8, 16, 12) -> (1, K, 8, 16, 12)."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(11)
    x = ops.parameter([1, 1, 8, 16, 12], ov.Type.f32, name="image")
    w = ops.constant(rng.standard_normal((channels_out, 1, 3, 3, 3)).astype(np.float32))
    y = ops.convolution(x, w, [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1])
    y = ops.add(y, ops.constant(rng.standard_normal((1, channels_out, 1, 1, 1)).astype(np.float32)))
    return ov.Model([y], [x], "small")


@pytest.mark.parametrize("mirror", [None, (0, 1, 2)])
@pytest.mark.parametrize("logits", [None, "f16", "bf16"])
def test_requests_in_turn_give_the_synchronous_logits(mirror, logits):
    """Also with the logits types the engine compiles (fp16; bf16 bits, which OpenVINO's numpy view would misread
    as fp16: ``logits_of`` reads them)."""
    import openvino as ov

    from edgeseg.runtime.infer.engine import core

    model = _small_openvino_model()
    if logits:  # as the engine compiles INT8/FP16 networks (f16) and networks inferring in bf16
        ppp = ov.preprocess.PrePostProcessor(model)
        ppp.output(0).tensor().set_element_type(ov.Type.f16 if logits == "f16" else ov.Type.bf16)
        model = ppp.build()
    compiled = core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    data = np.random.default_rng(5).standard_normal((1, 23, 41, 30)).astype(np.float32)
    patch = (8, 16, 12)

    def synchronous(x):  # one inference at a time, its output widened to float32 at once
        request = compiled.create_infer_request()
        request.infer({0: x})
        return as_float32(logits_of(request.get_output_tensor(0))).copy()

    reference = predict_logits(data, synchronous, patch, 3, 0.5, mirror_axes=mirror)
    requests = [compiled.create_infer_request() for _ in range(3)]
    runs = {
        "one request": predict_logits(data, requests[0], patch, 3, 0.5, mirror_axes=mirror),
        "two requests in turn": predict_logits(data, requests[:2], patch, 3, 0.5, mirror_axes=mirror, threads=2),
        "three requests in turn": predict_logits(data, requests, patch, 3, 0.5, mirror_axes=mirror, threads=1),
        "compiled model": predict_logits(data, compiled, patch, 3, 0.5, mirror_axes=mirror, jobs=2),
    }
    assert np.abs(reference).max() > 0.5  # a real prediction, not zeros
    for name, logits in runs.items():
        np.testing.assert_array_equal(logits, reference, err_msg=name)


def test_an_error_while_adding_waits_for_the_requests_in_flight():
    """A stop raised by the progress callback (the segmenter's time ceiling) leaves no request running."""
    from edgeseg.runtime.infer.engine import core

    compiled = core().compile_model(_small_openvino_model(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    requests = [compiled.create_infer_request() for _ in range(2)]
    data = np.random.default_rng(6).standard_normal((1, 23, 41, 30)).astype(np.float32)

    def stop(done, total):
        if done == 2:
            raise TimeoutError("over budget")

    with pytest.raises(TimeoutError):
        predict_logits(data, requests, (8, 16, 12), 3, 0.5, progress=stop)
    for request in requests:
        request.wait()  # returns at once: nothing is left running
        request.infer({0: np.zeros((1, 1, 8, 16, 12), np.float32)})  # and the requests are reusable


def test_the_engine_keeps_bf16_logits_only_where_the_network_computes_them(tmp_path, caplog):
    """bf16 logits leave the network only under the bf16 hint and only when its last computing layer writes bf16
    (read from the runtime model); otherwise the engine compiles it again with fp16 logits, as before."""
    import logging

    import openvino as ov

    from edgeseg.runtime.infer import engine

    xml = tmp_path / "small.xml"
    ov.save_model(_small_openvino_model(), xml)

    def logits_type(model_precision: str, hint: str) -> object:
        return engine._read_and_compile(xml, model_precision, "CPU", {"INFERENCE_PRECISION_HINT": hint}).outputs[0] \
            .get_element_type()

    assert logits_type("int8", "f32") == ov.Type.f16
    assert logits_type("fp32", "f32") == ov.Type.f32
    # bf16 asked of a float32 computation: the runtime model shows a conversion, which proves nothing
    forced = engine.core().compile_model(engine._with_logits_type(xml, "bf16"), "CPU",
                                         {"INFERENCE_PRECISION_HINT": "f32"})
    assert forced.outputs[0].get_element_type() == ov.Type.bf16
    assert not engine.produces_bf16(forced)
    with caplog.at_level(logging.INFO, logger="edgeseg.runtime.infer.engine"):
        compiled = engine._read_and_compile(xml, "int8", "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    kept = compiled.outputs[0].get_element_type() == ov.Type.bf16
    assert kept == engine.produces_bf16(compiled)
    assert kept or compiled.outputs[0].get_element_type() == ov.Type.f16
    assert kept != ("compiled again with f16 logits" in caplog.text)
    if engine._supports_bf16("CPU"):  # the convolution (its bias fused) computes in bf16 and writes bf16
        assert kept


def _integer_model(channels_out: int = 4):
    """A 3x3x3 convolution with small integer weights and bias: on integer images its logits are small integers,
    exact in bf16, fp16 and float32 whatever the inference precision, so every way of adding them must agree."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(12)
    x = ops.parameter([1, 1, 8, 16, 12], ov.Type.f32, name="image")
    w = ops.constant(rng.integers(-2, 3, (channels_out, 1, 3, 3, 3)).astype(np.float32))
    y = ops.convolution(x, w, [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1])
    y = ops.add(y, ops.constant(rng.integers(-3, 4, (1, channels_out, 1, 1, 1)).astype(np.float32)))
    return ov.Model([y], [x], "integer")


@pytest.mark.parametrize("use_gaussian,copy_threads", [(True, 1), (False, 1), (True, 3)])
def test_a_network_that_accumulates_itself_gives_the_windows_logits(tmp_path, monkeypatch, use_gaussian,
                                                                     copy_threads):
    """The window through an AccumulatingRequest (the update inside the network, the region copied in and out by
    classes over ``copy_threads`` threads, the buffer updated in place) equals the plain network with the separate
    fp16 update, bit for bit, and reports the same progress."""
    import openvino as ov

    from edgeseg.runtime.infer import engine, sliding_window as window_module
    from edgeseg.runtime.infer.sliding_window import AccumulatingRequest, sliding_window

    monkeypatch.setattr(window_module, "usable_cores", lambda: copy_threads)

    xml = tmp_path / "integer.xml"
    ov.save_model(_integer_model(), xml)
    patch, k = (8, 16, 12), 4
    g = gaussian_importance(patch) if use_gaussian else np.ones(patch, np.float16)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    accumulating = engine.core().compile_model(engine.accumulating_model(xml, g), "CPU", config)
    plain = engine._read_and_compile(xml, "int8", "CPU", config)  # fp16 logits, the separate update
    data = np.random.default_rng(9).integers(-3, 4, (1, 23, 41, 30)).astype(np.float32)
    seen: dict[str, list[tuple[int, int]]] = {"in network": [], "plain": []}
    runs = {}
    for name, model in (("in network", AccumulatingRequest(accumulating.create_infer_request())),
                        ("plain", [plain.create_infer_request()])):
        runs[name] = sliding_window(data, model, patch, k, 0.5, use_gaussian,
                                    progress=lambda done, total, _n=name: seen[_n].append((done, total)))
    assert np.abs(runs["plain"].logits()).max() > 1  # real logits, not zeros
    np.testing.assert_array_equal(runs["in network"].logits(), runs["plain"].logits())
    np.testing.assert_array_equal(runs["in network"].argmax(), runs["plain"].argmax())
    assert seen["in network"] == seen["plain"] and seen["plain"][-1][0] == seen["plain"][-1][1] > 1
    with pytest.raises(ValueError, match="unmirrored"):
        sliding_window(data, AccumulatingRequest(accumulating.create_infer_request()), patch, k, 0.5,
                       mirror_axes=(0,))


def test_even_ranges_split_every_index_once():
    from edgeseg.runtime.arrays import even_ranges

    for n in (1, 2, 5, 30):
        for parts in (1, 2, 3, 64):
            ranges = even_ranges(n, parts)
            assert len(ranges) == min(parts, n)
            assert [i for r in ranges for i in range(n)[r]] == list(range(n))
            assert max(r.stop - r.start for r in ranges) - min(r.stop - r.start for r in ranges) <= 1


def test_the_update_runs_in_the_network_only_where_it_is_exact(tmp_path):
    """In-network accumulation is proven from the compiled graph: a float32 computation (logits not the network's
    own bf16) does not count; under the bf16 hint on a CPU with bf16 the convolution's bf16 logits do."""
    import openvino as ov

    from edgeseg.runtime.infer import engine

    xml = tmp_path / "small.xml"
    ov.save_model(_small_openvino_model(), xml)
    model = engine.accumulating_model(xml, gaussian_importance((8, 16, 12)))
    assert [tuple(p.get_shape()) for p in model.inputs] == [(1, 1, 8, 16, 12), (3, 8, 16, 12)]
    f32 = engine.core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert not engine.accumulates_exactly(f32)
    if engine._supports_bf16("CPU"):
        bf16 = engine.core().compile_model(engine.accumulating_model(xml, gaussian_importance((8, 16, 12))), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "bf16"})
        assert engine.accumulates_exactly(bf16)


def test_the_engine_accumulates_in_the_network_only_for_bf16_unmirrored_parts():
    from dataclasses import replace

    from edgeseg.bundle import load_bundle
    from edgeseg.demo import demo_bundle_path
    from edgeseg.runtime.infer import engine

    bundle = load_bundle(demo_bundle_path())
    part = bundle.variant(None).parts[0]
    int8 = engine.compile_part(bundle, part, "CPU", "int8")
    assert int8.accumulates == (int8.precision == "int8+bf16" and not engine._mirrored(part))
    if engine._supports_bf16("CPU") and not engine._mirrored(part):
        assert int8.accumulates and [tuple(p.get_shape()) for p in int8.compiled.inputs][1][0] == part.num_outputs
    assert not engine.compile_part(bundle, part, "CPU", "fp32").accumulates
    mirrored = replace(part, use_mirroring=True, mirror_axes=(0, 1, 2))
    assert not engine.compile_part(bundle, mirrored, "CPU", "int8").accumulates


def test_a_network_the_update_cannot_be_appended_to_keeps_its_precision(monkeypatch, caplog):
    """A failure to build or compile the in-network update costs the update, not the precision: the plain network
    is compiled with the same precision."""
    import logging

    from edgeseg.bundle import load_bundle
    from edgeseg.demo import demo_bundle_path
    from edgeseg.runtime.infer import engine

    def broken(xml, gaussian):
        raise RuntimeError("no such output shape")

    monkeypatch.setattr(engine, "accumulating_model", broken)
    monkeypatch.setattr(engine, "_supports_bf16", lambda device: True)  # the bf16 candidate first, on any CPU
    bundle = load_bundle(demo_bundle_path())
    part = bundle.variant(None).parts[0]
    with caplog.at_level(logging.INFO, logger="edgeseg.runtime.infer.engine"):
        compiled = engine.compile_part(bundle, part, "CPU", "int8")
    assert not compiled.accumulates and compiled.precision.startswith("int8+")
    assert "no such output shape" in caplog.text and "the plain network is used" in caplog.text


@pytest.mark.parametrize("shape, patch, step", [((23, 41, 30), (8, 16, 12), 0.5), ((40, 35, 29), (16, 16, 16), 0.8),
                                                ((16, 16, 16), (16, 16, 16), 0.5)])
def test_the_box_no_earlier_tile_covered_is_exactly_the_untouched_part(shape, patch, step):
    """What the in-network window copies in: outside the corner's box every voxel of the tile was covered by an
    earlier tile, inside none (checked against the tiles' coverage drawn one by one)."""
    from edgeseg.runtime.infer.sliding_window import _first_untouched

    slicers = tile_slicers(shape, patch, step)
    corners = _first_untouched(slicers)
    assert corners is not None and corners[0] == (0, 0, 0)
    covered = np.zeros(shape, bool)
    for sl, (z, y, x) in zip(slicers, corners):
        box = np.zeros(patch, bool)
        box[z:, y:, x:] = True
        assert not covered[sl][box].any() and covered[sl][~box].all()
        covered[sl] = True
    assert covered.all()
    if len(slicers) > 1:
        assert _first_untouched(slicers[::-1]) is None  # not nnU-Net's order: the whole region is copied


def test_one_request_aggregates_on_every_core_several_on_one(monkeypatch):
    """The default aggregation threads follow the requests the window uses: tile after tile (one request) OpenVINO
    is idle while a tile is added, so every usable core adds; beside a request in flight (several), one thread."""
    from edgeseg.runtime.infer import sliding_window as window_module
    from edgeseg.runtime.infer.engine import core

    monkeypatch.setattr(aggregate, "usable_cores", lambda: 3)
    assert aggregate.aggregation_threads(1) == 3 and aggregate.aggregation_threads(2) == 1
    used = []
    real = Fp16Aggregator.__init__

    def spy(self, num_outputs, shape, patch_, gaussian, threads=None):
        used.append(threads)
        real(self, num_outputs, shape, patch_, gaussian, threads)

    monkeypatch.setattr(Fp16Aggregator, "__init__", spy)
    compiled = core().compile_model(_small_openvino_model(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    data = np.random.default_rng(7).standard_normal((1, 23, 41, 30)).astype(np.float32)
    patch = (8, 16, 12)
    one = window_module.predict_logits(data, compiled.create_infer_request(), patch, 3, 0.5)
    two = window_module.predict_logits(data, [compiled.create_infer_request() for _ in range(2)], patch, 3, 0.5)
    by_jobs = window_module.predict_logits(data, compiled, patch, 3, 0.5, jobs=1)
    chosen = window_module.predict_logits(data, compiled, patch, 3, 0.5, jobs=2, threads=2)
    assert used == [3, 1, 3, 2]
    for name, logits in {"two requests": two, "compiled, one job": by_jobs, "threads=2": chosen}.items():
        np.testing.assert_array_equal(logits, one, err_msg=name)
