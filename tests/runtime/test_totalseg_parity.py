"""Parity with TotalSegmentator itself (the released package, pinned in the test extra), not only nnU-Net.

Two layers:

* The wrapper, exactly: edgeseg's reorientation + input resampling + int32 cast and its way back to the input
  grid are compared bit for bit with TotalSegmentator's own ``as_closest_canonical``/``change_spacing``/
  ``undo_canonical`` on anisotropic, oblique, LPS- and RAS-stored grids, for the current order 1 and the legacy
  order 3.
* End to end: ``totalsegmentator(..., task="total_mr")`` on the CPU with small trained models installed where it
  looks for its weights, against edgeseg FP32 on a ``--totalseg`` bundle exported from the same weights, for the
  3 mm single-part path and the 1.5 mm two-part path. The only differences left are voxels where the demo
  network's two best fp16 logits tie within a few fp16 steps: OpenVINO's and torch's float32 convolutions differ
  by ~1e-4, which moves such a tie either way (the components of that path are compared exactly in
  ``test_parity.py`` and ``test_resample_reference.py``). The figures for the clinical grids of the parity issue
  come from ``benchmarks/totalseg_parity.py``.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeseg.bundle.schema import PreResample, Variant
from edgeseg.runtime.postprocess import to_input_grid
from edgeseg.runtime.preprocess import orient
from edgeseg.runtime.read import read_series
from edgeseg.runtime.options import SegmentOptions
from edgeseg.runtime.segmenter import Segmenter
from helpers.totalseg_reference import agreement, clinical_volume, install_standins, run_totalsegmentator

pytestmark = [pytest.mark.reference]

REPO = Path(__file__).resolve().parents[2]
PARTS = REPO / "tests" / "fixtures" / "total_mr_example" / "total_mr_parts.json"
LABELS = REPO / "edgeseg" / "demo" / "mri" / "total_mr_labels.json"

#: small clinical-like grids (CI time); the issue's full-size grids are in benchmarks/totalseg_parity.py
GRIDS = {
    "haste_6mm_lps": dict(shape=(192, 156, 24), spacing=(1.19, 1.19, 6.0)),
    "dixon_3mm_oblique_ras": dict(shape=(160, 128, 40), spacing=(1.5, 1.5, 3.0), rotate_deg=(12.0, 0.0, 8.0),
                                  storage="RAS"),
    "iso_1.5mm_lps": dict(shape=(128, 104, 64), spacing=(1.5, 1.5, 1.5)),
    "coronal_0.9x4mm": dict(shape=(256, 20, 200), spacing=(0.9, 4.0, 0.9), rotate_deg=(-90.0, 0.0, 0.0)),
}


@pytest.fixture(scope="module")
def grids(tmp_path_factory, real_mri) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("grids")
    out = {"as_is_3mm": real_mri}
    out.update({name: clinical_volume(real_mri, root / f"{name}.nii.gz", **spec) for name, spec in GRIDS.items()})
    return out


def _variant(order: int, spacing: float) -> Variant:
    pre = PreResample((spacing,) * 3, order=order, cast="int32", mode="nearest", order_back=0, header_float32=True)
    return Variant("v", 0, "RAS", pre, ())


# ------------------------------------------------------------------------------------------ the wrapper, exactly

@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("spacing", [1.5, 3.0])
@pytest.mark.parametrize("grid", ["as_is_3mm", *GRIDS])
def test_input_resampling_is_totalsegmentators(grids, grid, spacing, order):
    nib = pytest.importorskip("nibabel")
    resampling = pytest.importorskip("totalsegmentator.resampling")

    original = nib.load(grids[grid])
    canonical = nib.as_closest_canonical(nib.Nifti1Image(original.get_fdata(), original.affine))
    theirs = resampling.change_spacing(canonical, [spacing] * 3, order=order, dtype=np.int32, nr_cpus=1)
    ours = orient(read_series(grids[grid]), _variant(order, spacing))
    assert ours.array.shape == theirs.shape
    np.testing.assert_array_equal(ours.array, np.asarray(theirs.dataobj, dtype=np.float32))
    # the spacing nnU-Net then reads from the file TotalSegmentator writes
    assert ours.spacing == tuple(float(z) for z in theirs.header.get_zooms()[:3])


@pytest.mark.parametrize("grid", ["as_is_3mm", *GRIDS])
def test_labels_back_to_the_input_grid_as_totalsegmentator(grids, grid):
    nib = pytest.importorskip("nibabel")
    resampling = pytest.importorskip("totalsegmentator.resampling")
    alignment = pytest.importorskip("totalsegmentator.alignment")

    original = nib.load(grids[grid])
    volume = read_series(grids[grid])
    oriented = orient(volume, _variant(1, 1.5))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 51, size=oriented.array.shape).astype(np.uint8)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(original.get_fdata(), original.affine))
    low = nib.Nifti1Image(labels, resampling.change_spacing(canonical, [1.5] * 3, order=1).affine)
    back = resampling.change_spacing(low, [1.5] * 3, canonical.shape, order=0, dtype=np.uint8, nr_cpus=1,
                                     force_affine=canonical.affine)
    theirs = np.asarray(alignment.undo_canonical(back, original).dataobj)
    ours = to_input_grid(labels, oriented)
    assert ours.shape == volume.shape
    np.testing.assert_array_equal(ours, theirs)


# ---------------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def totalseg(tmp_path_factory, small_model, real_mri):
    """A TOTALSEG_HOME_DIR with the stand-in total_mr models and the edgeseg FP32 bundle exported from them."""
    pytest.importorskip("totalsegmentator")
    from edgeseg.export.pipeline import ExportSettings, VariantSpec, export_bundle

    root = tmp_path_factory.mktemp("totalseg")
    models = install_standins(root / "home", small_model, PARTS)
    calibration = root / "calibration"
    calibration.mkdir()
    shutil.copy(real_mri, calibration / real_mri.name)
    bundle = export_bundle(
        [VariantSpec("1.5mm", (models["850"], models["851"]), 0), VariantSpec("3mm", (models["852"],), 1)],
        root / "bundle", calibration,
        ExportSettings(precisions=("fp32",), totalseg=True, labels_file=LABELS, validation_contrasts=("original",),
                       torch_check_patches=1, latency_repeats=1))
    return root / "home", bundle


def test_totalseg_bundle_records_the_wrapper(totalseg):
    from edgeseg.export import totalseg as wrapper

    _, bundle = totalseg
    for name, spacing in (("1.5mm", 1.5), ("3mm", 3.0)):
        v = bundle.variant(name)
        assert v.reorient == "RAS" and v.follows.startswith(f"TotalSegmentator {wrapper.RELEASE}")
        assert v.pre_resample == PreResample((spacing,) * 3, order=1, cast="int32", mode="nearest", order_back=0,
                                             header_float32=True)
        assert all(p.tile_step_size == 0.8 and not p.use_mirroring and p.folds == ("0",) for p in v.parts)
    raw = json.loads((bundle.path / "bundle.json").read_text())
    assert raw["variants"][0]["pre_resample"]["order"] == 1  # read from the file, not a runtime constant


CASES = [("as_is_3mm", "3mm"), ("haste_6mm_lps", "3mm"), ("dixon_3mm_oblique_ras", "3mm"),
         ("iso_1.5mm_lps", "3mm"), ("coronal_0.9x4mm", "3mm"),
         ("haste_6mm_lps", "1.5mm"), ("dixon_3mm_oblique_ras", "1.5mm")]


@pytest.mark.slow
@pytest.mark.parametrize("grid,variant", CASES)
def test_fp32_matches_totalsegmentator(totalseg, grids, tmp_path, grid, variant):
    import nibabel as nib

    home, bundle = totalseg
    ref_path = tmp_path / "totalseg.nii.gz"
    run_totalsegmentator(home, grids[grid], ref_path, fast=variant == "3mm")
    reference = nib.load(ref_path)
    volume = read_series(grids[grid])
    labels, _ = Segmenter(bundle, SegmentOptions(precision="fp32", variant=variant)).segment_volume(volume)
    np.testing.assert_allclose(reference.affine, volume.affine, atol=1e-5)
    score = agreement(labels, np.asarray(reference.dataobj))
    print(f"{grid} {variant}: agreement {score['agreement']:.6f}, {score['structures']} structures, "
          f"mean Dice {score['mean_dice']:.5f}, lowest {score['min_dice']:.4f} (label {score['worst']})")
    assert score["structures"] >= 10, "the demo model finds many structures on the real MRI"
    assert score["agreement"] >= 0.9998
    assert score["mean_dice"] >= 0.999
    assert score["min_dice"] >= 0.99


@pytest.mark.slow
def test_legacy_order_3_matches_totalsegmentator_with_resampling_order_3(totalseg, grids, tmp_path):
    """``--totalseg-order 3`` (releases up to 2.15.0) against TotalSegmentator run with ``-ro 3``; and the
    order matters: the order-3 bundle disagrees with TotalSegmentator's default far more."""
    import nibabel as nib

    home, bundle = totalseg
    v = bundle.variant("3mm")
    legacy = dataclasses.replace(bundle, variants=(dataclasses.replace(
        v, pre_resample=dataclasses.replace(v.pre_resample, order=3)),))
    volume = read_series(grids["haste_6mm_lps"])
    labels, _ = Segmenter(legacy, SegmentOptions(precision="fp32", variant="3mm")).segment_volume(volume)
    run_totalsegmentator(home, grids["haste_6mm_lps"], tmp_path / "ro3.nii.gz", fast=True, resampling_order=3)
    run_totalsegmentator(home, grids["haste_6mm_lps"], tmp_path / "ro1.nii.gz", fast=True)
    same = agreement(labels, np.asarray(nib.load(tmp_path / "ro3.nii.gz").dataobj))
    other = agreement(labels, np.asarray(nib.load(tmp_path / "ro1.nii.gz").dataobj))
    assert same["agreement"] >= 0.9998 and same["min_dice"] >= 0.99
    assert other["agreement"] < same["agreement"] and other["min_dice"] < 0.99
