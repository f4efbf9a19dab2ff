"""Tiny nnU-Net v2 model folders (real format, random weights) for fast export tests."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the export tests need the export extra")

from helpers.tiny_models import make_tiny_model  # noqa: E402


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return make_tiny_model(tmp_path / "models", "Dataset901_Tiny", {1: "liver", 2: "spleen", 3: "kidney_left"})


@pytest.fixture
def calibration_dir(tmp_path, real_mri) -> Path:
    import shutil

    d = tmp_path / "calibration"
    d.mkdir()
    shutil.copy(real_mri, d / real_mri.name)
    return d
