"""Tests of the nnU-Net v2 test-model generators (edgeseg.export.testmodels).

* the committed small real model (tests/fixtures/models/Dataset900_EdgesegDemoMR/...) is a complete nnU-Net v2
  folder that nnunetv2's own predictor loads, and it still segments its training case;
* ts_sized writes TotalSegmentator-MRI-sized folders that nnunetv2's predictor loads, with 30 / 22 / 51 outputs.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dynamic_network_architectures")

from edgeseg.export.testmodels import _nnunet_folder as nf  # noqa: E402
from edgeseg.export.testmodels import small_mr, ts_sized  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SMALL_FOLDER = (REPO / "tests" / "fixtures" / "models" / "Dataset900_EdgesegDemoMR"
                / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres")
CHECKPOINT_KEYS = ["network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                   "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"]
ARCH_KWARGS_KEYS = ["n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
                    "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
                    "dropout_op_kwargs", "nonlin", "nonlin_kwargs"]


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _check_folder(folder: Path, *, trainer: str, num_outputs: int, spacing: list[float]) -> dict:
    """Files, plans/dataset content and checkpoint keys of one generated folder; returns the checkpoint."""
    assert folder.name == f"{trainer}__nnUNetPlans__3d_fullres"
    plans = _load_json(folder / "plans.json")
    dataset = _load_json(folder / "dataset.json")
    assert plans["dataset_name"] == folder.parent.name
    assert plans["transpose_forward"] == [0, 1, 2] and plans["image_reader_writer"] == "SimpleITKIO"
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["spacing"] == spacing
    assert cfg["normalization_schemes"] == ["ZScoreNormalization"] and cfg["use_mask_for_norm"] == [False]
    arch = cfg["architecture"]
    assert arch["network_class_name"] == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    assert list(arch["arch_kwargs"]) == ARCH_KWARGS_KEYS
    assert arch["_kw_requires_import"] == ["conv_op", "norm_op", "dropout_op", "nonlin"]
    assert set(plans["foreground_intensity_properties_per_channel"]["0"]) == {
        "mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5"}
    assert dataset["labels"]["background"] == 0
    assert len(dataset["labels"]) == num_outputs == nf.num_segmentation_heads(dataset)
    assert dataset["channel_names"] == {"0": "MRI"} and dataset["file_ending"] == ".nii.gz"

    # loads without unpickling arbitrary objects, as edgeseg's exporter loads it
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert list(ckpt) == CHECKPOINT_KEYS
    assert ckpt["trainer_name"] == trainer
    assert ckpt["init_args"]["configuration"] == "3d_fullres" and ckpt["init_args"]["fold"] == 0
    assert ckpt["init_args"]["plans"] == plans and ckpt["init_args"]["dataset_json"] == dataset
    assert ckpt["inference_allowed_mirroring_axes"] is None  # what the *NoMirroring trainers save
    net = nf.build_network(arch, 1, num_outputs, deep_supervision=False, initialize=False)
    net.load_state_dict(ckpt["network_weights"], strict=True)
    assert net.decoder.seg_layers[-1].out_channels == num_outputs
    return ckpt


# ------------------------------------------------------------------------------------------ small real model


def test_small_model_folder_is_complete() -> None:
    if not SMALL_FOLDER.is_dir():
        pytest.fail(f"committed small model missing: {SMALL_FOLDER} (run python -m edgeseg.export.testmodels.small_mr)")
    ckpt = _check_folder(SMALL_FOLDER, trainer=small_mr.TRAINER_NAME, num_outputs=51, spacing=[3.0, 3.0, 3.0])
    arch = ckpt["init_args"]["plans"]["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"] == [16, 32, 64, 128]
    assert arch["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert ckpt["init_args"]["plans"]["configurations"]["3d_fullres"]["patch_size"] == [16, 80, 96]
    labels = _load_json(SMALL_FOLDER / "dataset.json")["labels"]
    assert labels["spleen"] == 1 and labels["brain"] == 50
    record = (SMALL_FOLDER / "TRAINING_RECORD.md").read_text(encoding="utf-8")
    assert "trained on ONE case; not a clinical model" in record
    size = sum(p.stat().st_size for p in SMALL_FOLDER.rglob("*") if p.is_file())
    assert size < 20e6


@pytest.mark.reference
def test_small_model_loads_in_nnunet_predictor_and_segments_its_case(real_mri: Path, real_labels: Path) -> None:
    pytest.importorskip("nnunetv2")
    case = small_mr.load_case(real_mri, real_labels)
    predictor = nf.nnunet_predictor(SMALL_FOLDER, tile_step_size=0.5, use_gaussian=True, use_mirroring=False)
    assert predictor.trainer_name == small_mr.TRAINER_NAME
    assert predictor.label_manager.num_segmentation_heads == 51
    seg = nf.predict_with_nnunet(predictor, case.image, case.spacing)
    assert seg.shape == case.image.shape
    classes = sorted((set(np.unique(seg).tolist()) | set(np.unique(case.seg).tolist())) - {0})
    dice = small_mr.dice_per_class(seg, case.seg, classes)
    assert np.mean(list(dice.values())) >= 0.75, dice


# ------------------------------------------------------------------------------ TotalSegmentator-sized models


@pytest.mark.parametrize("which, name, outputs, spacing", [
    ("850", "Dataset850_TotalSegMRI_part1_organs_1088subj", 30, [1.5, 1.5, 1.5]),
    ("851", "Dataset851_TotalSegMRI_part2_muscles_1088subj", 22, [1.5, 1.5, 1.5]),
    ("852", "Dataset852_TotalSegMRI_total_3mm_1088subj", 51, [3.0, 3.0, 3.0]),
])
def test_ts_sized_plans(which: str, name: str, outputs: int, spacing: list[float], total_mr_data_dir: Path) -> None:
    parts_file = total_mr_data_dir / "total_mr_parts.json"
    plans, dataset = ts_sized.model_plans(which, total_mr_data_dir)
    assert plans["dataset_name"] == name
    assert nf.num_segmentation_heads(dataset) == outputs == len(dataset["labels"])
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["spacing"] == spacing and cfg["patch_size"] == [128, 128, 128]
    kw = cfg["architecture"]["arch_kwargs"]
    assert kw["n_stages"] == 6 and kw["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert kw["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert kw["n_conv_per_stage"] == [2] * 6 and kw["n_conv_per_stage_decoder"] == [2] * 5
    if which != "852":
        parts = json.loads(parts_file.read_text())[name]
        assert {int(v): k for k, v in dataset["labels"].items() if v} == {int(k): v for k, v in parts.items()}


@pytest.fixture(scope="module")
def part2_folder(tmp_path_factory: pytest.TempPathFactory, total_mr_data_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("ts_sized")
    folders = ts_sized.generate(out, which=("851",), seed=0, data_dir=total_mr_data_dir)
    return folders["851"]


@pytest.mark.slow
def test_ts_sized_part2_folder_and_release_zip(part2_folder: Path, tmp_path: Path) -> None:
    assert part2_folder.parent.name == "Dataset851_TotalSegMRI_part2_muscles_1088subj"
    ckpt = _check_folder(part2_folder, trainer="nnUNetTrainer_2000epochs_NoMirroring", num_outputs=22,
                         spacing=[1.5, 1.5, 1.5])
    assert ckpt["current_epoch"] == 2000
    zip_path = ts_sized.make_release_zip(part2_folder, tmp_path / "Dataset851.zip")
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(zf.namelist())
    top = "Dataset851_TotalSegMRI_part2_muscles_1088subj/nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres/"
    assert names == [top + "dataset.json", top + "fold_0/checkpoint_final.pth", top + "plans.json"]


@pytest.mark.slow
@pytest.mark.reference
def test_ts_sized_part2_loads_in_nnunet_predictor(part2_folder: Path) -> None:
    pytest.importorskip("nnunetv2")
    seg = ts_sized.smoke_predict(part2_folder)
    assert seg.shape == (128, 128, 128)
    assert seg.min() >= 0 and seg.max() <= 21


def test_trainer_classes_exist_in_nnunetv2() -> None:
    pytest.importorskip("nnunetv2")
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    for name in (small_mr.TRAINER_NAME, ts_sized.TRAINER_NAME):
        cls = nf.find_trainer_class(name)
        assert cls.__name__ == name and issubclass(cls, nnUNetTrainer)
