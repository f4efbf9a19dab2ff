"""The export pipeline end to end on tiny real-format models, and its failure modes."""
from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.errors import ExportError
from edgeseg.export.pipeline import ExportSettings, VariantSpec, export_bundle
from helpers.tiny_models import make_tiny_model

FAST = dict(validation_contrasts=("original",), torch_check_patches=2, latency_repeats=1)


@pytest.fixture
def two_parts(tmp_path):
    a = make_tiny_model(tmp_path / "m", "Dataset850_TotalSegMRI_part1_organs_1088subj",
                        {1: "spleen", 2: "kidney_right", 3: "liver"}, trainer="nnUNetTrainer_2000epochs_NoMirroring")
    b = make_tiny_model(tmp_path / "m", "Dataset851_TotalSegMRI_part2_muscles_1088subj",
                        {1: "femur_left", 2: "autochthon_left"}, seed=5, trainer="nnUNetTrainer_2000epochs_NoMirroring")
    return a, b


def _labels_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"1": "spleen", "2": "kidney_right", "5": "liver", "36": "femur_left",
                                "46": "autochthon_left"}))
    return path


@pytest.mark.slow
def test_two_parts_export_into_one_bundle_with_merged_labels(tmp_path, two_parts, calibration_dir):
    settings = ExportSettings(totalseg=True, labels_file=_labels_file(tmp_path), **FAST)
    bundle = export_bundle([VariantSpec("1.5mm", two_parts)], tmp_path / "bundle", calibration_dir, settings)
    assert bundle.labels[36] == "femur_left" and len(bundle.labels) == 5
    v = bundle.variant()
    assert v.reorient == "RAS" and v.pre_resample is not None and v.pre_resample.cast == "int32"
    p1, p2 = v.parts
    assert p1.label_map == {1: 1, 2: 2, 3: 5} and p2.label_map == {1: 36, 2: 46}
    assert p1.tile_step_size == 0.8 and not p1.use_mirroring
    assert set(p1.models) == {"fp32", "int8"}
    assert p1.source["trainer"] == "nnUNetTrainer_2000epochs_NoMirroring"
    report = json.loads((bundle.path / "validation.json").read_text())
    assert {t["part"] for t in report["fp32_vs_torch"]} == {p1.name, p2.name}
    assert all(t["argmax_agreement"] > 0.99 for t in report["fp32_vs_torch"])
    assert {lat["precision"] for lat in report["latency_per_tile"]} == {"fp32", "int8"}
    assert not list(tmp_path.glob(".bundle.partial-*"))
    # the runtime reads it and segments the real MRI on the input grid
    from edgeseg.runtime.read import read_series
    from edgeseg.runtime.options import SegmentOptions
    from edgeseg.runtime.segmenter import Segmenter

    vol = read_series(next(calibration_dir.iterdir()))
    labels, record = Segmenter(bundle, SegmentOptions(precision="int8")).segment_volume(vol)
    assert labels.shape == vol.shape
    assert set(np.unique(labels)) <= {0, 1, 2, 5, 36, 46}
    assert [p["precision"].split("+")[0] for p in record["parts"]] == ["int8", "int8"]


@pytest.mark.slow
def test_folds_are_ensembled_in_one_graph(tmp_path, calibration_dir):
    folder = make_tiny_model(tmp_path / "m", "Dataset903_Folds", {1: "liver"}, folds=(0, 1))
    bundle = export_bundle([VariantSpec("default", (folder,))], tmp_path / "b", calibration_dir,
                           ExportSettings(precisions=("fp32",), **FAST))
    assert bundle.variant().parts[0].folds == ("0", "1")
    report = json.loads((bundle.path / "validation.json").read_text())
    assert report["fp32_vs_torch"][0]["max_abs_logit_diff"] < 1e-3


def test_calibration_folder_without_series_fails_and_leaves_nothing(tmp_path, tiny_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ExportError, match="No readable series"):
        export_bundle([VariantSpec("d", (tiny_model,))], tmp_path / "b", empty, ExportSettings(**FAST))
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.partial-*"))


def test_disk_full_leaves_no_half_bundle(tmp_path, tiny_model, calibration_dir, monkeypatch):
    import edgeseg.export.convert as convert

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert, "save_ir", full)
    with pytest.raises(ExportError, match="is the disk full"):
        export_bundle([VariantSpec("d", (tiny_model,))], tmp_path / "b", calibration_dir, ExportSettings(**FAST))
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.partial-*"))


def test_existing_output_needs_force(tmp_path, tiny_model, calibration_dir):
    (tmp_path / "b").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_bundle([VariantSpec("d", (tiny_model,))], tmp_path / "b", calibration_dir, ExportSettings(**FAST))


def test_cli_exit_codes_for_bad_input(tmp_path, calibration_dir, capsys):
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "b"), "--calibration",
                 str(calibration_dir)]) == 3  # ModelFolderError
    assert main(["export", "--out", str(tmp_path / "b"), "--calibration", str(calibration_dir)]) == 2  # no model
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_fp16_ir_is_exported_and_runs(tmp_path, tiny_model, calibration_dir):
    from edgeseg.runtime.read import read_series
    from edgeseg.runtime.options import SegmentOptions
    from edgeseg.runtime.segmenter import Segmenter

    bundle = export_bundle([VariantSpec("d", (tiny_model,))], tmp_path / "b", calibration_dir,
                           ExportSettings(precisions=("fp32", "fp16"), **FAST))
    part = bundle.variant().parts[0]
    assert set(part.models) == {"fp32", "fp16"}
    fp16_size = (bundle.path / part.models["fp16"].bin).stat().st_size
    assert fp16_size < 0.6 * (bundle.path / part.models["fp32"].bin).stat().st_size
    vol = read_series(next(calibration_dir.iterdir()))
    labels, record = Segmenter(bundle, SegmentOptions(precision="fp16")).segment_volume(vol)
    assert labels.shape == vol.shape and record["parts"][0]["precision"].startswith("fp16")
    report = json.loads((bundle.path / "validation.json").read_text())
    assert report["summary"]["fp16"]["mean_dice_vs_fp32"] is not None


def test_totalseg_pre_resample_is_the_schema_dataclass():
    """``--totalseg`` records TotalSegmentator's wrapper as the bundle schema's PreResample (no dict twin)."""
    from edgeseg.bundle.schema import PreResample
    from edgeseg.export import totalseg

    fast = totalseg.pre_resample("Dataset852_TotalSegMRI_total_3mm_1088subj", [1.0, 2.0, 2.5], 1)
    assert fast == PreResample(spacing=(3.0, 3.0, 3.0), order=1, cast="int32", mode="nearest", order_back=0,
                               header_float32=True)
    other = totalseg.pre_resample("Dataset123_Other", [3.0, 2.0, 1.0], 3)
    assert other.spacing == (1.0, 2.0, 3.0) and other.order == 3  # the plans' (z, y, x) as world (x, y, z)
