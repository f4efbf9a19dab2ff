"""Parity with nnunetv2's own predictor on the same weights, on the real MRI, as NIfTI and as DICOM.

Requirements: edgeseg FP32 vs nnunetv2 Dice >= 0.999 for every class present; INT8 vs FP32 mean Dice >= 0.98.
The reference sees the image the way the model expects it (RAS canonical, SimpleITK order); its labels are
mapped back to the input grid and to the bundle's merged numbering before comparing.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgeseg.bundle import load_bundle
from edgeseg.export.metrics import dice_per_class
from edgeseg.runtime.read import read_series
from edgeseg.runtime.options import SegmentOptions
from edgeseg.runtime.segmenter import Segmenter

pytestmark = [pytest.mark.slow, pytest.mark.reference]


def _dice_per_class(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    """Dice of every structure found in either map, by the export's own :func:`dice_per_class`."""
    classes = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    return {c: d for c, d in dice_per_class(a, b, classes).items() if d is not None}


def _canonical(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(labels, affine)).dataobj)


@pytest.fixture(scope="module")
def demo_bundle():
    from edgeseg.demo import demo_bundle_path

    return load_bundle(demo_bundle_path())


@pytest.fixture(scope="module")
def reference(real_mri, small_model, demo_bundle):
    """nnunetv2's segmentation of the real MRI, in the bundle's numbering, on the RAS-canonical grid."""
    pytest.importorskip("nnunetv2")
    import nibabel as nib

    from helpers.nnunet_reference import reference_segmentation

    can = nib.as_closest_canonical(nib.load(real_mri))
    part = demo_bundle.variant().parts[0]
    seg = reference_segmentation(small_model, np.asarray(can.dataobj, dtype=np.float32),
                                 can.header.get_zooms()[:3], tile_step_size=part.tile_step_size)
    lut = np.zeros(part.num_outputs, dtype=np.uint8)
    for src, dst in part.label_map.items():
        lut[src] = dst
    return lut[seg]


def _assert_parity(ours_canonical: np.ndarray, reference: np.ndarray) -> None:
    assert ours_canonical.shape == reference.shape
    dice = _dice_per_class(ours_canonical, reference)
    assert len(dice) >= 10, "the demo model should find many structures on its training case"
    worst = min(dice, key=dice.get)
    assert dice[worst] >= 0.999, f"class {worst}: Dice {dice[worst]:.5f} vs nnunetv2"


def test_fp32_nifti_matches_nnunetv2(real_mri, demo_bundle, reference):
    vol = read_series(real_mri)
    labels, record = Segmenter(demo_bundle, SegmentOptions(precision="fp32")).segment_volume(vol)
    assert record["parts"][0]["precision"] == "fp32+f32"
    _assert_parity(_canonical(labels, vol.affine), reference)


def test_fp32_dicom_matches_nnunetv2(tmp_path, real_mri, demo_bundle, reference):
    from edgeseg.demo.dicom_series import write_dicom_series

    write_dicom_series(real_mri, tmp_path / "dicom")
    vol = read_series(tmp_path / "dicom")
    assert vol.kind == "dicom"
    labels, _ = Segmenter(demo_bundle, SegmentOptions(precision="fp32")).segment_volume(vol)
    assert labels.shape == vol.shape
    _assert_parity(_canonical(labels, vol.affine), reference)


def test_int8_vs_fp32_mean_dice(real_mri, demo_bundle):
    vol = read_series(real_mri)
    fp32, _ = Segmenter(demo_bundle, SegmentOptions(precision="fp32")).segment_volume(vol)
    int8, record = Segmenter(demo_bundle, SegmentOptions(precision="int8")).segment_volume(vol)
    assert record["parts"][0]["precision"].startswith("int8")
    dice = _dice_per_class(fp32, int8)
    assert np.mean(list(dice.values())) >= 0.98, dice
