"""Fixtures of the installer tests."""
from __future__ import annotations

from types import ModuleType

import pytest

from installer_helpers import load_installer_module


@pytest.fixture(scope="session")
def manifest() -> ModuleType:
    """installer/freeze_manifest.py, the one list the PyInstaller spec builds from."""
    return load_installer_module("freeze_manifest")
