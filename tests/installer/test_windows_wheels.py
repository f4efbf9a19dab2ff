"""The Windows app's dependency set exists: the runtime requirements of pyproject.toml (the list the Linux build
installs, with the DICOM decoders and pynetdicom) and PyInstaller resolve for win_amd64 as binary wheels only, with
their dependencies (installer/windows_wheels.py, the same check ``build.py --windows-wheels`` runs). Needs the
package index, as every test run does to install the test extra."""
from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

from installer_helpers import REPO, load_installer_module


@pytest.fixture(scope="module")
def wheels() -> ModuleType:
    return load_installer_module("windows_wheels")


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]).lower()


def test_the_requirements_are_pyprojects_runtime_list_plus_pyinstaller(wheels: ModuleType) -> None:
    reqs = wheels.runtime_requirements()
    names = {_name(r) for r in reqs}
    for needed in ("openvino", "numpy", "pydicom", "highdicom", "python-gdcm", "pyjpegls", "pynetdicom", "pyinstaller"):
        assert needed in names, needed
    for heavy in ("torch", "onnx", "nncf", "nnunetv2"):
        assert heavy not in names


def test_the_fallback_reader_agrees_with_tomllib(wheels: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.10 has no tomllib: the small reader of the two arrays gives the same lists."""
    import builtins

    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    expected = wheels._dependency_arrays(text)
    real_import = builtins.__import__

    def no_tomllib(name: str, *args: object, **kwargs: object) -> object:
        if name == "tomllib":
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tomllib)
    assert wheels._dependency_arrays(text) == expected


def test_every_runtime_requirement_has_a_win_amd64_wheel(wheels: ModuleType, tmp_path: Path) -> None:
    report = wheels.check_windows_wheels(tmp_path / "wheels")
    got = {wheels.distribution_name(w) for w in report["wheels"]}
    missing = {_name(r) for r in report["requirements"]} - got
    assert not missing, f"no win_amd64 wheel resolved for {missing}"
    assert all(w.endswith(("-none-any.whl", "-win_amd64.whl")) for w in report["wheels"]), report["wheels"]
    assert any(w.startswith("openvino-") and w.endswith("-cp311-cp311-win_amd64.whl") for w in report["wheels"])
    print(f"{len(report['wheels'])} wheels, {report['mb']} MB: {', '.join(report['wheels'])}")


def test_a_requirement_without_a_wheel_fails_by_name(wheels: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(wheels.WheelCheckError, match=r"(?s)did not resolve to binary wheels.*numpy==0.0.1"):
        wheels.check_windows_wheels(tmp_path / "none", requirements=["numpy==0.0.1"])
