"""``edgeseg segment``'s exit status comes from the error family: 0 when every series was segmented completely, the
partial code when an output is missing, the "some failed" code when some series were segmented and others not, the
class of the first failure when none was segmented."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.cli import main
from edgeseg.errors import (EXIT_SOME_FAILED, BundleError, ConfigError, EdgesegError, InvalidSeriesError,
                            OutOfMemoryError, OutputError)
from edgeseg.runtime.write import SegmentResult


def test_a_folder_without_series_exits_with_the_invalid_series_code(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "segment", str(tmp_path), "--bundle", "demo"]) == InvalidSeriesError.exit_code
    assert f"No image series found in {tmp_path}" in capsys.readouterr().err


def test_no_bundle_named_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19: nothing runs a model nobody named; the demo only when named 'demo'."""
    assert main(["-q", "segment", str(tmp_path)]) == ConfigError.exit_code
    assert "No model bundle named" in capsys.readouterr().err


def test_a_missing_bundle_exits_with_the_bundle_code(tmp_path: Path) -> None:
    assert main(["-q", "segment", str(tmp_path), "--bundle", str(tmp_path / "nope")]) == BundleError.exit_code


@pytest.mark.parametrize("failures, expected", [
    ([OutputError("disk full")], OutputError.exit_code),
    ([None, OutOfMemoryError("no memory")], EXIT_SOME_FAILED),  # one segmented, one failed: "some failed"
    ([InvalidSeriesError("one slice"), OutputError("disk full")], InvalidSeriesError.exit_code),
    ([None, None], 0),
])
def test_the_first_failing_series_gives_the_exit_code(failures: list[EdgesegError | None], expected: int,
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    refs = [f"series{i}" for i in range(len(failures))]
    outcome = dict(zip(refs, failures))

    result = SegmentResult(tmp_path, {}, {"run": {"timings_s": {"total": 0.1}, "parts": [{"precision": "fp32"}]}})

    def segment(self: object, source: str, **kwargs: object) -> SegmentResult:
        err = outcome[source]
        if err is not None:
            raise err
        return result

    monkeypatch.setattr("edgeseg.runtime.read.series_to_segment", lambda path, **kwargs: (refs, []))
    monkeypatch.setattr("edgeseg.runtime.segmenter.Segmenter.segment", segment)
    assert main(["-q", "segment", str(tmp_path), "--bundle", "demo"]) == expected
