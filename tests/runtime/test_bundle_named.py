"""No model nobody named (issue 19): a missing or invalid bundle is a typed error with its exit code in every mode
(one-shot, watch, segment); the packaged demo bundle runs only when named ``demo``."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeseg.cli import main
from edgeseg.errors import BundleError, ConfigError

ENGINE_VARIABLES = ("MERCURE_IN_DIR", "MERCURE_OUT_DIR", "MONAI_INPUTPATH", "MONAI_OUTPUTPATH", "HOLOSCAN_INPUT_PATH",
                    "HOLOSCAN_OUTPUT_PATH", "EDGESEG_BUNDLE", "HOLOSCAN_MODEL_PATH", "MONAI_MODELPATH")


@pytest.fixture(autouse=True)
def _no_engine_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENGINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def series_folder(tmp_path: Path, real_mri: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(real_mri, folder / "case.nii.gz")
    return folder


def test_oneshot_with_a_model_folder_without_bundle_json_exits_with_the_bundle_code(
        tmp_path: Path, series_folder: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.ts").write_bytes(b"not a bundle")
    monkeypatch.setenv("HOLOSCAN_INPUT_PATH", str(series_folder))
    monkeypatch.setenv("HOLOSCAN_OUTPUT_PATH", str(tmp_path / "out"))
    monkeypatch.setenv("HOLOSCAN_MODEL_PATH", str(models))
    assert main(["run"]) == BundleError.exit_code
    err = capsys.readouterr().err
    assert "HOLOSCAN_MODEL_PATH" in err and "holds no bundle.json" in err
    assert not any((tmp_path / "out").rglob("*.nii.gz"))  # nothing segmented with the demo behind anyone's back


def test_oneshot_naming_no_bundle_exits_with_the_config_code(tmp_path: Path, series_folder: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--input", str(series_folder), "--output", str(tmp_path / "out")]) == ConfigError.exit_code
    assert "No model bundle named" in capsys.readouterr().err


@pytest.mark.parametrize("bundle", ["missing", "empty"])
def test_oneshot_with_an_invalid_bundle_flag_exits_non_zero(tmp_path: Path, series_folder: Path, bundle: str) -> None:
    (tmp_path / "empty").mkdir()
    code = main(["run", "--input", str(series_folder), "--output", str(tmp_path / "out"),
                 "--bundle", str(tmp_path / bundle)])
    assert code in (BundleError.exit_code, ConfigError.exit_code)


@pytest.mark.parametrize("bundle", ["missing", "empty"])
def test_watch_with_an_invalid_bundle_exits_non_zero(tmp_path: Path, series_folder: Path, bundle: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    config = tmp_path / "watch_config.yaml"
    config.write_text(f"roots: [in]\nbundle: {bundle}\nquiet_period_s: 0.3\nstate_dir: state\n"
                      "time_budget_s: null\n", encoding="utf-8")
    code = main(["watch", "--config", str(config), "--once"])
    expected = ConfigError.exit_code if bundle == "missing" else BundleError.exit_code
    assert code == expected
    assert str(tmp_path / bundle) in capsys.readouterr().err
    assert not list(series_folder.glob("*.edgeseg"))


@pytest.mark.parametrize("bundle", ["missing", "empty"])
def test_segment_with_an_invalid_bundle_exits_non_zero(tmp_path: Path, series_folder: Path, bundle: str) -> None:
    (tmp_path / "empty").mkdir()
    code = main(["segment", str(series_folder / "case.nii.gz"), "--bundle", str(tmp_path / bundle)])
    assert code in (BundleError.exit_code, ConfigError.exit_code)
    assert not list(series_folder.glob("*.edgeseg"))
