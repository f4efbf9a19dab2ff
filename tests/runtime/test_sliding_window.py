"""The sliding-window aggregator, tested with constant and identity models (TorchIO's approach)."""
from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime.infer.sliding_window import mirror_combinations, pad_to_patch, predict_logits, tile_slicers
from edgeseg.runtime.infer.tiling import compute_steps, gaussian_importance, tile_count


def test_constant_model_gives_constant_logits_everywhere():
    data = np.random.default_rng(0).standard_normal((1, 21, 30, 17)).astype(np.float32)
    constants = np.array([0.5, -1.25, 3.0], dtype=np.float32)

    def model(x):
        return np.broadcast_to(constants.reshape(1, 3, 1, 1, 1), (1, 3, *x.shape[2:])).copy()

    out = predict_logits(data, model, (8, 16, 8), 3, 0.5)
    assert out.shape == (3, 21, 30, 17)
    # nnU-Net accumulates in fp16 and so do we: image corners reached only by tile corners get weights below
    # fp16's range and come out 0; everywhere else the weighted mean is the constant (to fp16 precision)
    inner = (slice(None), slice(2, -2), slice(3, -3), slice(2, -2))
    for c in range(3):
        np.testing.assert_allclose(out[inner][c], constants[c], rtol=5e-3, atol=2e-3)
    assert (out.argmax(0)[1:-1, 1:-1, 1:-1] == 2).all()


@pytest.mark.parametrize("shape", [(21, 30, 17), (5, 6, 7), (8, 16, 8)])
def test_identity_model_puts_every_tile_back_in_place(shape):
    data = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
    out = predict_logits(data, lambda x: np.concatenate([x, 0 * x], axis=1), (8, 16, 8), 2, 0.5)
    assert out.shape == (2, *shape)
    # fp16 accumulation (as nnU-Net): border voxels seen only by a tile's far border carry weights near fp16's
    # smallest subnormal and lose precision; inside, every tile's output lands where it came from
    inner = tuple(slice(2, -2) if s > 6 else slice(None) for s in shape)
    np.testing.assert_allclose(out[0][inner], data[0][inner], rtol=4e-3, atol=5e-3)
    assert not out[1].any()


def test_mirroring_of_a_flip_equivariant_model_changes_nothing():
    data = np.random.default_rng(2).standard_normal((1, 12, 20, 12)).astype(np.float32)
    model = lambda x: np.concatenate([x, -x], axis=1)  # noqa: E731 - commutes with flips
    plain = predict_logits(data, model, (8, 16, 8), 2, 0.5)
    mirrored = predict_logits(data, model, (8, 16, 8), 2, 0.5, mirror_axes=(0, 1, 2))
    np.testing.assert_allclose(plain, mirrored, atol=5e-3)
    assert len(mirror_combinations((0, 1, 2))) == 8


def test_padding_centres_content_and_is_undone():
    data = np.ones((1, 3, 5, 8), dtype=np.float32)
    padded, unpad = pad_to_patch(data, (8, 8, 8))
    assert padded.shape == (1, 8, 8, 8)
    assert unpad == (slice(2, 5), slice(1, 6), slice(0, 8))  # extra voxel above, as nnU-Net pads
    assert padded[(slice(None), *unpad)].sum() == data.sum() == padded.sum()


def test_tiles_cover_the_image_exactly_once_at_least():
    cover = np.zeros((40, 33, 50), dtype=int)
    for sl in tile_slicers(cover.shape, (16, 16, 16), 0.5):
        cover[sl] += 1
    assert cover.min() >= 1
    assert tile_count((40, 33, 50), (16, 16, 16), 0.5) == len(tile_slicers(cover.shape, (16, 16, 16), 0.5))


def test_gaussian_has_no_zeros_and_peaks_at_ten():
    g = gaussian_importance((16, 80, 96))
    assert g.dtype == np.float16 and g.min() > 0 and float(g.max()) == pytest.approx(10.0, rel=1e-3)


@pytest.mark.reference
def test_steps_and_gaussian_match_nnunetv2():
    pytest.importorskip("nnunetv2")
    import torch
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    rng = np.random.default_rng(3)
    for _ in range(200):
        patch = tuple(int(p) for p in rng.integers(4, 64, 3))
        image = tuple(int(p + rng.integers(0, 200)) for p in patch)
        step = float(rng.choice([0.5, 0.8, 1.0, 0.33]))
        assert compute_steps(image, patch, step) == compute_steps_for_sliding_window(image, patch, step)
    ref = compute_gaussian((16, 80, 96), 1 / 8, 10, dtype=torch.float16, device=torch.device("cpu")).numpy()
    np.testing.assert_array_equal(gaussian_importance((16, 80, 96)), ref)


@pytest.mark.reference
@pytest.mark.parametrize("mirror", [False, True])
def test_aggregation_is_bit_identical_to_nnunetv2(mirror):
    """Same network (a fixed random conv), same input: our logits equal nnunetv2's fp16 logits exactly."""
    pytest.importorskip("nnunetv2")
    import types

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 4, 3, padding=1).eval()
    patch = (8, 16, 12)
    data = np.random.default_rng(4).standard_normal((1, 19, 37, 20)).astype(np.float32)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.network = net
    predictor.configuration_manager = types.SimpleNamespace(patch_size=list(patch))
    predictor.label_manager = types.SimpleNamespace(num_segmentation_heads=4)
    predictor.allowed_mirroring_axes = (0, 1, 2)
    with torch.no_grad():
        ref = predictor.predict_sliding_window_return_logits(torch.from_numpy(data)).numpy()

    def model(x):
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()

    ours = predict_logits(data, model, patch, 4, 0.5, mirror_axes=(0, 1, 2) if mirror else None)
    assert ref.dtype == np.float16
    ref = ref.astype(np.float32)
    if not mirror:
        np.testing.assert_array_equal(ours, ref)
    else:  # the 8 flips are summed in float32 in another order: at most a stray fp16 ulp
        assert (ours != ref).mean() < 1e-4
        np.testing.assert_allclose(ours, ref, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("slab", [1, 3, 4, 16])
def test_argmax_of_quotient_is_the_argmax_of_nnunets_fp16_quotient(slab: int) -> None:
    """Labels read from the fp16 accumulator with one request per kernel for all slabs are exactly the first
    maximum of f16(acc / w) per voxel (numpy's argmax of the same fp16 quotient), whatever the slab; an inf in the
    accumulator raises instead of giving a label."""
    from edgeseg.runtime.infer.aggregate import argmax_of_quotient

    rng = np.random.default_rng(slab)
    acc = rng.normal(size=(7, 10, 9, 5)).astype(np.float16)
    acc[3, :, :2] = acc[1, :, :2]  # exact ties: the first class wins
    w = (rng.random((10, 9, 5)) + 0.3).astype(np.float16)
    quotient = (acc.astype(np.float32) / w.astype(np.float32)).astype(np.float16)
    out = np.empty(acc.shape[1:], np.uint8)
    np.testing.assert_array_equal(argmax_of_quotient(acc, w, out, slab), np.argmax(quotient, axis=0))
    acc[2, 9, 8, 4] = np.inf
    with pytest.raises(FloatingPointError, match="non-finite"):
        argmax_of_quotient(acc, w, out, slab)


def test_fp16_logits_in_place_are_nnunets_fp16_values_and_what_resampling_back_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``logits16`` divides in the accumulator itself: the same fp16 values ``logits`` gives as float32, and the
    array the part's resampling back reads is that fp16 one (nnU-Net resamples fp16 logits into fp16, so each
    resampled value is rounded to fp16 before the argmax)."""
    from types import SimpleNamespace

    from edgeseg.runtime import postprocess
    from edgeseg.runtime.infer.sliding_window import sliding_window

    rng = np.random.default_rng(4)
    data = rng.normal(size=(1, 19, 23, 17)).astype(np.float32)

    def model(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x * 3.1, -x, x * x], axis=1)

    as_float32 = sliding_window(data, model, (8, 16, 8), 3, 0.5).logits()
    in_place = sliding_window(data, model, (8, 16, 8), 3, 0.5).logits16()
    assert in_place.dtype == np.float16
    np.testing.assert_array_equal(in_place.astype(np.float32), as_float32)

    seen = {}

    def fake_argmax_resampled(logits: np.ndarray, shape: tuple, *args: object) -> np.ndarray:
        seen["dtype"] = logits.dtype
        return np.zeros(shape, np.uint8)

    monkeypatch.setattr(postprocess, "argmax_resampled", fake_argmax_resampled)
    pre = SimpleNamespace(data=data, shape_after_cropping=(30, 23, 17), bbox=((0, 30), (0, 23), (0, 17)),
                          shape_before_cropping=(30, 23, 17), network_spacing=(1.0,) * 3,
                          spacing_before_resampling=(0.6, 1.0, 1.0))
    part = SimpleNamespace(resampling_probabilities=SimpleNamespace(order=1, order_z=0, force_separate_z=None,
                                                                    anisotropy_threshold=3.0),
                           transpose_backward=(0, 1, 2))
    postprocess.logits_to_part_labels(sliding_window(data, model, (8, 16, 8), 3, 0.5), pre, part)
    assert seen["dtype"] == np.float16
