"""Tests of the nnU-Net v2 test-model generator (tests/helpers/testmodels/ts_sized.py): it writes
TotalSegmentator-MRI-sized folders that nnunetv2's predictor loads, with 30 / 22 / 51 outputs, from the committed
label files (nothing outside the clone). The demo-model trainer (tools/train_demo_model.py) and the committed small
model are tested in tests/tools/.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dynamic_network_architectures")

from helpers.nnunet_folders import check_model_folder  # noqa: E402

from helpers.testmodels import _nnunet_folder as nf  # noqa: E402
from helpers.testmodels import ts_sized  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


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
    ckpt = check_model_folder(part2_folder, trainer="nnUNetTrainer_2000epochs_NoMirroring", num_outputs=22,
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


def test_trainer_class_exists_in_nnunetv2() -> None:
    pytest.importorskip("nnunetv2")
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    cls = nf.find_trainer_class(ts_sized.TRAINER_NAME)
    assert cls.__name__ == ts_sized.TRAINER_NAME and issubclass(cls, nnUNetTrainer)


def test_default_label_files_are_the_committed_ones() -> None:
    """Without ``data_dir`` the generator reads the packaged labels and the committed parts fixture, never a
    folder outside the clone."""
    for path in (ts_sized.DEFAULT_LABELS_JSON, ts_sized.DEFAULT_PARTS_JSON):
        assert path.is_file() and path.resolve().is_relative_to(REPO), path
    for which, outputs in (("850", 30), ("851", 22), ("852", 51)):
        assert nf.num_segmentation_heads(ts_sized.model_plans(which)[1]) == outputs
