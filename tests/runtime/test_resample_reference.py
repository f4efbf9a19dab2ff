"""Our numpy/scipy resampling and preprocessing against nnunetv2's own functions."""
from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime.resample import argmax_resampled, resample_data

pytestmark = pytest.mark.reference


@pytest.mark.parametrize("old_spacing,new_spacing,shape", [
    ((3.0, 3.0, 3.0), (1.5, 1.5, 1.5), (10, 12, 9)),   # upsampling, isotropic
    ((5.0, 1.0, 1.0), (1.0, 1.0, 1.0), (6, 20, 18)),   # anisotropic: separate z with order 0
    ((1.0, 0.8, 0.8), (2.0, 1.6, 1.6), (20, 31, 29)),  # downsampling
])
def test_data_resampling_matches_nnunetv2(old_spacing, new_spacing, shape):
    nnunet = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1, *shape)).astype(np.float32)
    new_shape = nnunet.compute_new_shape(shape, old_spacing, new_spacing)
    ref = nnunet.resample_data_or_seg_to_shape(data, new_shape, old_spacing, new_spacing, is_seg=False, order=3,
                                               order_z=0, force_separate_z=None)
    ours = resample_data(data, new_shape, old_spacing, new_spacing, order=3, order_z=0)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("net_spacing,orig_spacing,shape", [
    ((1.5, 1.5, 1.5), (3.0, 3.0, 3.0), (16, 20, 18)),
    ((1.0, 1.0, 1.0), (5.0, 1.0, 1.0), (30, 20, 18)),
])
def test_logit_resampling_and_argmax_match_nnunetv2(net_spacing, orig_spacing, shape):
    nnunet = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((5, *shape)).astype(np.float16)
    target = nnunet.compute_new_shape(shape, net_spacing, orig_spacing)
    ref = nnunet.resample_data_or_seg_to_shape(logits, target, net_spacing, orig_spacing, is_seg=False, order=1,
                                               order_z=0, force_separate_z=None).argmax(0)
    ours = argmax_resampled(logits, target, net_spacing, orig_spacing, order=1, order_z=0)
    assert ours.shape == tuple(target)
    np.testing.assert_array_equal(ours, ref)  # nnU-Net keeps fp16 logits fp16 after resampling: so do we


def test_preprocessing_matches_nnunetv2_default_preprocessor(real_mri, small_model):
    pytest.importorskip("nnunetv2")
    import json

    import nibabel as nib
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from edgeseg.bundle.schema import Normalization, Part, Resampling, Variant
    from edgeseg.runtime.preprocess import orient, preprocess
    from edgeseg.runtime.read import read_series

    plans = json.loads((small_model / "plans.json").read_text())
    dataset = json.loads((small_model / "dataset.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    # a target spacing unlike the image's, so resampling is exercised too
    cm.configuration["spacing"] = [2.0, 2.5, 2.5]
    can = nib.as_closest_canonical(nib.load(real_mri))
    data = can.get_fdata().astype(np.float32).transpose(2, 1, 0)[None]
    ref, _, props = DefaultPreprocessor(verbose=False).run_case_npy(
        data, None, {"spacing": [float(s) for s in can.header.get_zooms()[::-1]]}, pm, cm, dataset)

    part = Part("p", {1: 1}, 1, 2, (2.0, 2.5, 2.5), (16, 80, 96), (0, 1, 2), (0, 1, 2),
                (Normalization("ZScoreNormalization"),), Resampling(3), Resampling(1), 0.5, True, False, (0, 1, 2),
                ("0",), {})
    variant = Variant("v", 0, "RAS", None, (part,))
    ours = preprocess(orient(read_series(real_mri), variant), part)
    assert ours.data.shape == ref.shape
    assert tuple(map(tuple, props["bbox_used_for_cropping"])) == ours.bbox
    np.testing.assert_allclose(ours.data, ref, atol=1e-4)
