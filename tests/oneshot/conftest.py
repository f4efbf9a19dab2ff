"""Fixtures for the one-shot tests: DICOM series of the real MRI written once per session, a refused series (a
Siemens mosaic), environments without any engine variable, and the root logger put back after
``edgeseg.cli.main``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

#: every variable an engine sets that the one-shot mode reads (cleared for each test)
ENGINE_VARIABLES = ("MERCURE_IN_DIR", "MERCURE_OUT_DIR", "MONAI_INPUTPATH", "MONAI_OUTPUTPATH", "HOLOSCAN_INPUT_PATH",
                    "HOLOSCAN_OUTPUT_PATH", "MODULE_PERSISTENCE_DIR", "EDGESEG_BUNDLE", "HOLOSCAN_MODEL_PATH",
                    "MONAI_MODELPATH", "HOLOSCAN_APP_MANIFEST_PATH", "HOLOSCAN_PKG_MANIFEST_PATH")


@pytest.fixture(autouse=True)
def _no_engine_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test sets the engine variables it plays; none leaks in from the shell."""
    for name in ENGINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)



@pytest.fixture(scope="session")
def demo_series(real_mri: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The real MRI (117x91x20 @ 3 mm) as a classic MR DICOM series, one file per slice (treat read-only)."""
    from edgeseg.demo.dicom_series import write_dicom_series

    return write_dicom_series(real_mri, tmp_path_factory.mktemp("demo_series") / "series", "t1_vibe_tra")


@pytest.fixture(scope="session")
def mosaic_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A Siemens EPI mosaic that no selection rule skips, which edgeseg refuses with its reason (treat read-only)."""
    from helpers.dicom_cases import neutral_mosaic

    return neutral_mosaic(tmp_path_factory.mktemp("mosaic") / "series")


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment for a child process: no engine variables, no EDGESEG_ settings."""
    return {k: v for k, v in os.environ.items() if k not in ENGINE_VARIABLES and not k.startswith("EDGESEG_")}
