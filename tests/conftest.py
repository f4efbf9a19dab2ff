"""Shared fixtures: where the real data lives, and the helpers package on the path."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "total_mr_example"
PACKAGED_MRI = REPO / "edgeseg" / "demo" / "mri" / "example_mr_sm.nii.gz"
SMALL_MODEL = REPO / "tests" / "fixtures" / "models" / "Dataset900_EdgesegDemoMR"

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def real_mri() -> Path:
    """The real abdominal MRI (117x91x20 @ 3 mm): ../shared when present, else the packaged copy."""
    path = SHARED_DATA / "example_mr_sm.nii.gz"
    if path.is_file():
        return path
    if PACKAGED_MRI.is_file():
        return PACKAGED_MRI
    pytest.skip("real MRI not found (../shared/data/total_mr_example or edgeseg/demo/mri)")


@pytest.fixture(scope="session")
def real_labels() -> Path:
    path = SHARED_DATA / "example_seg_mr.nii.gz"
    if not path.is_file():
        pytest.skip("reference labels ../shared/data/total_mr_example/example_seg_mr.nii.gz not found")
    return path


@pytest.fixture(scope="session")
def small_model() -> Path:
    """The committed small real nnU-Net v2 model folder (trainer folder)."""
    folders = sorted(SMALL_MODEL.glob("*__nnUNetPlans__3d_fullres"))
    if not folders:
        pytest.skip("small model fixture not found under tests/fixtures/models")
    return folders[0]
