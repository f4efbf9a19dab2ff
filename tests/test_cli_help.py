"""``edgeseg --help`` is written for the people who run edgeseg (radiographers, PACS administrators): what it
does, how to start, where the manual is; no developer notes."""
from __future__ import annotations

import pytest

from edgeseg import cli


def _help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_help_opens_with_what_edgeseg_does_and_ends_with_where_to_read_on(capsys) -> None:
    out = _help(capsys)
    first = out.split("\n\n")[1]  # after the usage line
    assert first.startswith("edgeseg segments MRI series")
    assert "docs/" in out and "edgeseg COMMAND --help" in out
    for command in ("demo", "doctor", "watch", "segment", "run", "status", "deliver"):
        assert f"\n    {command} " in out, command
    for developer_text in ("logging", "torch", "sub-command", "``"):
        assert developer_text not in out.lower(), developer_text


def test_help_fits_a_terminal() -> None:
    assert max(len(line) for line in cli.DESCRIPTION.splitlines() + cli.EPILOG.splitlines()) <= 80
