"""One helper for optional heavy dependencies (torch, onnx, nncf, nnunetv2, highdicom...).

The runtime path never imports the export extras at module level; functions that need them call
:func:`require` at the point of use, which raises an ImportError that names the extra to install.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from edgeseg.errors import MissingDependencyError

#: which extra provides which module
_EXTRA_OF = {
    "torch": "export",
    "onnx": "export",
    "nncf": "export",
    "dynamic_network_architectures": "export",
    "nnunetv2": "test",
    "PyInstaller": "installer",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = _EXTRA_OF.get(module.split(".")[0])
        hint = f'pip install "edgeseg[{extra}]"' if extra else f"pip install {module.split('.')[0]}"
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{module.split('.')[0]}', which is not installed here. "
            f"Install it with: {hint}"
        ) from err
