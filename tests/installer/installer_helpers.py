"""Helpers of the installer tests: the repo paths and the installer's modules loaded from their files."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "installer"


def load_installer_module(name: str) -> ModuleType:
    """Import ``installer/<name>.py`` (installer/ is not a package: the spec and build.py run it as files)."""
    key = f"_edgeseg_installer_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, INSTALLER / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module
