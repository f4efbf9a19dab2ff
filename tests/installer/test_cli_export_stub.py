"""The frozen runtime has no export stage: ``edgeseg export`` must say how to get it (exit 9), not "invalid choice"."""
from __future__ import annotations

import importlib
from typing import Any

import pytest

from edgeseg import cli
from edgeseg.errors import MissingDependencyError

HINT = "pip install 'edgeseg[export]'"


@pytest.fixture
def without_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import edgeseg.export.* fails as in the frozen app, where edgeseg.export is excluded."""
    real = importlib.import_module

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "edgeseg.export" or name.startswith("edgeseg.export."):
            raise ModuleNotFoundError("No module named 'edgeseg.export'", name="edgeseg.export")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)


@pytest.mark.parametrize("argv", [
    ["export"],
    ["export", "--help"],
    ["export", "--totalseg", "--variant", "1.5mm", "Dataset850", "--out", "b"],
    ["-q", "export", "path/to/model", "--calibration", "dir"],
])
def test_export_in_a_build_without_it_says_how_to_get_it(without_export: None, argv: list[str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == MissingDependencyError.exit_code == 9
    err = capsys.readouterr().err
    assert "The export stage is not part of this runtime build" in err
    assert HINT in err


def test_help_lists_the_stub_and_the_runtime_commands(without_export: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "export" in out and "not in this runtime build" in out
    assert "segment" in out and "watch" in out


def test_other_missing_modules_are_not_turned_into_the_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ModuleNotFoundError from inside a stage (a missing dependency) still surfaces."""
    real = importlib.import_module

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "edgeseg.runtime.commands":
            raise ModuleNotFoundError("No module named 'scipy'", name="scipy")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser()
