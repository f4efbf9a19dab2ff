"""The sliding window's overlap of inference and aggregation changes nothing: the chunked, threaded fp16
aggregation equals nnU-Net's arithmetic done directly, and OpenVINO requests used in turn (ping-pong) give the
same logits as running the model tile after tile."""
from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime.infer import aggregate
from edgeseg.runtime.infer.aggregate import Fp16Aggregator, chunks
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
@pytest.mark.parametrize("fp16_output", [False, True])
def test_requests_in_turn_give_the_synchronous_logits(mirror, fp16_output):
    import openvino as ov

    from edgeseg.runtime.infer.engine import core

    model = _small_openvino_model()
    if fp16_output:  # as the engine compiles INT8/FP16 networks
        ppp = ov.preprocess.PrePostProcessor(model)
        ppp.output(0).tensor().set_element_type(ov.Type.f16)
        model = ppp.build()
    compiled = core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    data = np.random.default_rng(5).standard_normal((1, 23, 41, 30)).astype(np.float32)
    patch = (8, 16, 12)

    def synchronous(x):  # one inference at a time, its output copied out at once
        return np.array(compiled({0: x})[0])

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
