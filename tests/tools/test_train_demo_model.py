"""The demo-model trainer ``tools/train_demo_model.py`` (a development tool outside the installed package) and the
small real model it trained, committed in tests/fixtures/models/Dataset900_EdgesegDemoMR/...: a complete nnU-Net v2
folder that nnunetv2's own predictor loads, and that still segments its training case.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dynamic_network_architectures")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import train_demo_model  # noqa: E402
from helpers.nnunet_folders import check_model_folder, load_json  # noqa: E402

from edgeseg.export.metrics import dice_per_class  # noqa: E402
from helpers.testmodels import _nnunet_folder as nf  # noqa: E402

SMALL_FOLDER = (REPO / "tests" / "fixtures" / "models" / "Dataset900_EdgesegDemoMR"
                / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres")


def test_the_trainer_and_the_test_model_builders_are_not_part_of_the_installed_package() -> None:
    # (by the checkout's files and package list: an editable install made from an older checkout still maps
    # edgeseg.export.testmodels to its own folder; tests/test_packaging.py checks the built wheel)
    assert importlib.util.find_spec("edgeseg.export.small_mr") is None
    assert not list((REPO / "export").rglob("train*.py"))
    assert not (REPO / "export" / "testmodels").exists()
    assert "testmodels" not in (REPO / "pyproject.toml").read_text(encoding="utf-8")


def test_default_data_is_the_committed_demo_mri_and_fixture() -> None:
    for path in (train_demo_model.DEFAULT_IMAGE, train_demo_model.DEFAULT_SEG, train_demo_model.DEFAULT_LABELS):
        assert path.is_file() and path.resolve().is_relative_to(REPO), path
    assert train_demo_model.DEFAULT_OUT == REPO / "tests" / "fixtures" / "models"


def test_it_runs_as_a_script_from_the_repository_root() -> None:
    proc = subprocess.run([sys.executable, "tools/train_demo_model.py", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "python tools/train_demo_model.py" in proc.stdout and "example_seg_mr.nii.gz" in proc.stdout


def test_small_model_folder_is_complete() -> None:
    if not SMALL_FOLDER.is_dir():
        pytest.fail(f"committed small model missing: {SMALL_FOLDER} (run python tools/train_demo_model.py)")
    ckpt = check_model_folder(SMALL_FOLDER, trainer=train_demo_model.TRAINER_NAME, num_outputs=51,
                              spacing=[3.0, 3.0, 3.0])
    arch = ckpt["init_args"]["plans"]["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"] == [16, 32, 64, 128]
    assert arch["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert ckpt["init_args"]["plans"]["configurations"]["3d_fullres"]["patch_size"] == [16, 80, 96]
    labels = load_json(SMALL_FOLDER / "dataset.json")["labels"]
    assert labels["spleen"] == 1 and labels["brain"] == 50
    record = (SMALL_FOLDER / "TRAINING_RECORD.md").read_text(encoding="utf-8")
    assert "trained on ONE case; not a clinical model" in record
    assert "tools/train_demo_model.py" in record
    size = sum(p.stat().st_size for p in SMALL_FOLDER.rglob("*") if p.is_file())
    assert size < 20e6


@pytest.mark.reference
def test_small_model_loads_in_nnunet_predictor_and_segments_its_case(real_mri: Path, real_labels: Path) -> None:
    pytest.importorskip("nnunetv2")
    case = train_demo_model.load_case(real_mri, real_labels)
    predictor = nf.nnunet_predictor(SMALL_FOLDER, tile_step_size=0.5, use_gaussian=True, use_mirroring=False)
    assert predictor.trainer_name == train_demo_model.TRAINER_NAME
    assert predictor.label_manager.num_segmentation_heads == 51
    seg = nf.predict_with_nnunet(predictor, case.image, case.spacing)
    assert seg.shape == case.image.shape
    classes = sorted((set(np.unique(seg).tolist()) | set(np.unique(case.seg).tolist())) - {0})
    dice = dice_per_class(seg, case.seg, classes)
    assert np.mean(list(dice.values())) >= 0.75, dice


def test_trainer_class_exists_in_nnunetv2() -> None:
    pytest.importorskip("nnunetv2")
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    cls = nf.find_trainer_class(train_demo_model.TRAINER_NAME)
    assert cls.__name__ == train_demo_model.TRAINER_NAME and issubclass(cls, nnUNetTrainer)
