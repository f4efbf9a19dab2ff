"""The error family: every class carries its kind, its own exit code and its remedy; the README's exit-code table is
the family's; the command line returns the class's code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgeseg import cli, errors
from edgeseg.errors import (
    EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_SOME_FAILED, ConfigError, EdgesegError, InferenceError,
    InvalidSeriesError, OutputError, PartialResultError, error_classes, exit_code_of, kind_of, remedy_for,
    summary_exit_code,
)

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES = list(error_classes())


def test_every_class_of_the_family_is_listed() -> None:
    defined = {obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, EdgesegError)}
    assert set(CLASSES) == defined and len(CLASSES) == len(defined) >= 15


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_class_has_its_own_kind_exit_code_and_remedy(cls: type[EdgesegError]) -> None:
    for attribute in ("kind", "exit_code", "remedy"):
        assert attribute in vars(cls), f"{cls.__name__} inherits {attribute} instead of stating its own"
    assert re.fullmatch(r"[a-z_]+", cls.kind)
    assert isinstance(cls.exit_code, int) and 0 < cls.exit_code < 126 and cls.exit_code != EXIT_INTERRUPTED
    text = remedy_for(cls)  # every placeholder it names is one remedy_for knows
    assert text.endswith(".") and "{" not in text and len(text) > 30


def test_kinds_exit_codes_and_remedies_are_distinct() -> None:
    for attribute in ("kind", "exit_code", "remedy"):
        values = [getattr(cls, attribute) for cls in CLASSES]
        assert len(set(values)) == len(values), f"two classes share a {attribute}"


def test_existing_exit_codes_are_kept() -> None:
    codes = {cls.__name__: cls.exit_code for cls in CLASSES}
    assert codes == {
        "EdgesegError": 1, "ConfigError": 2, "ModelFolderError": 3, "ExportError": 4, "BundleError": 5,
        "InvalidSeriesError": 6, "InferenceError": 7, "OutputError": 8, "MissingDependencyError": 9,
        "StateStoreError": 10, "WatcherRunningError": 11, "SeriesTooLargeError": 12, "TimeCeilingError": 13,
        "SeriesInterruptedError": 14, "OutOfMemoryError": 15, "PartialResultError": 16,
            "DicomNodeError": 18, "DeliveryError": 19}
    assert (EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PARTIAL, EXIT_SOME_FAILED) == (0, 1, 130, 16, 17)
    assert EXIT_SOME_FAILED not in codes.values()  # a summary of several series, no class of its own


def test_remedy_names_the_device_and_folder_it_is_given(tmp_path: Path) -> None:
    assert "on GPU.1:" in remedy_for(InferenceError("boom"), device="GPU.1")
    assert str(tmp_path) in remedy_for(OutputError("disk full"), folder=tmp_path)
    assert "the output folder" in remedy_for(OutputError("disk full"))  # neutral wording without a value


def test_an_error_outside_the_family_is_a_bug() -> None:
    err = RuntimeError("boom")
    assert kind_of(err) == "internal" and exit_code_of(err) == EXIT_FAILED
    assert "bug in edgeseg" in remedy_for(err, log_file="/var/log/edgeseg.log")
    assert "/var/log/edgeseg.log" in remedy_for(err, log_file="/var/log/edgeseg.log")
    assert kind_of(OutputError("x")) == "output" and exit_code_of(OutputError("x")) == 8


def _readme_table() -> dict[int, tuple[str, str]]:
    """{exit code: (kind, class)} from the README's exit-code table."""
    text = README.read_text(encoding="utf-8")
    start = text.index("| exit code | kind | error class |")
    rows: dict[int, tuple[str, str]] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        rows[int(cells[0])] = (cells[1], cells[2])
    return rows


def test_readme_exit_code_table_is_the_error_family() -> None:
    table = _readme_table()
    expected = {cls.exit_code: (cls.kind, cls.__name__) for cls in CLASSES}
    assert {code: row for code, row in table.items() if code in expected} == expected
    assert set(table) - set(expected) == {EXIT_OK, EXIT_INTERRUPTED, EXIT_SOME_FAILED}


@pytest.mark.parametrize("complete, partial, failures, expected", [
    (2, 0, [], EXIT_OK),
    (1, 1, [], EXIT_PARTIAL),
    (0, 1, [], EXIT_PARTIAL),
    (1, 0, [InvalidSeriesError("refused")], EXIT_SOME_FAILED),
    (0, 1, [OutputError("disk full")], EXIT_SOME_FAILED),
    (0, 0, [InvalidSeriesError("refused"), OutputError("disk full")], InvalidSeriesError.exit_code),
    (0, 0, [RuntimeError("bug")], EXIT_FAILED),
])
def test_summary_exit_code_of_several_series(complete: int, partial: int, failures: list[BaseException],
                                             expected: int) -> None:
    """0 when every series succeeded, 16 when some are partial, 17 when some failed and others did not, the
    error's own code when none succeeded."""
    assert summary_exit_code(complete, partial, failures) == expected
    assert PartialResultError.exit_code == EXIT_PARTIAL


# ------------------------------------------------------------------------------------- the command line's codes


def _segment_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def run_segment(args: object) -> int:
        raise exc
    monkeypatch.setattr("edgeseg.runtime.commands.run_segment", run_segment)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_main_returns_the_class_exit_code(cls: type[EdgesegError], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _segment_raising(monkeypatch, cls("the message"))
    assert cli.main(["-q", "segment", "x"]) == cls.exit_code
    assert "the message" in capsys.readouterr().err


def test_main_returns_130_on_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    _segment_raising(monkeypatch, KeyboardInterrupt())
    assert cli.main(["-q", "segment", "x"]) == EXIT_INTERRUPTED


def test_main_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == ConfigError.exit_code
    assert "usage:" in capsys.readouterr().out
