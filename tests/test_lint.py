"""The linter passes: ruff with the settings of ``[tool.ruff]`` in pyproject.toml over every source folder."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: every folder that holds Python source of the project (packaged or not)
FOLDERS = ("export", "runtime", "bundle", "edgeseg", "installer", "tools", "benchmarks", "tests")


def test_ruff_finds_nothing():
    pytest.importorskip("ruff", reason="ruff is in the test extra")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                           str(REPO / "pyproject.toml"), "--output-format", "concise", *FOLDERS],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_ruff_checks_the_folders_that_hold_the_code():
    """No folder of Python source outside the list above (a new top-level folder must be linted too)."""
    tops = set()
    for path in REPO.rglob("*.py"):
        parts = path.relative_to(REPO).parts
        if len(parts) > 1 and parts[0] not in ("build", "dist") and not any(p.startswith(".") for p in parts):
            tops.add(parts[0])
    assert tops <= set(FOLDERS), sorted(tops - set(FOLDERS))
