"""Type-check edgeseg as it is imported: ``edgeseg.bundle``, ``edgeseg.runtime`` and ``edgeseg.export`` live in
the top-level folders ``bundle/``, ``runtime/`` and ``export/`` (pyproject's ``package-dir``), which mypy cannot
map by itself. This builds the installed layout as a tree of symbolic links in a temporary folder and runs mypy
there with the settings of ``[tool.mypy]`` in pyproject.toml.

Usage: ``python tools/typecheck.py [--with-export]``: checks ``edgeseg`` with ``edgeseg.bundle`` and
``edgeseg.runtime`` (and ``edgeseg.export``); exits with mypy's status. CI runs it with ``--with-export``
through ``tests/test_architecture.py``.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: import name -> folder in the checkout (pyproject.toml [tool.setuptools] package-dir)
PACKAGE_DIRS = {"bundle": REPO / "bundle", "runtime": REPO / "runtime", "export": REPO / "export"}
#: the runtime side (edgeseg, edgeseg.bundle, edgeseg.runtime); "export" adds the build-machine package
DEFAULT_SUBPACKAGES = ("bundle", "runtime")


def shadow_tree(root: Path, subpackages: tuple[str, ...]) -> Path:
    """``root/edgeseg`` laid out as installed (with ``subpackages`` only), every entry a link into the checkout."""
    package = root / "edgeseg"
    package.mkdir()
    for entry in (REPO / "edgeseg").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name in subpackages:
        (package / name).symlink_to(PACKAGE_DIRS[name], target_is_directory=True)
    return root


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    subpackages = DEFAULT_SUBPACKAGES + (("export",) if "--with-export" in args else ())
    with tempfile.TemporaryDirectory(prefix="edgeseg-typecheck-") as tmp:
        root = shadow_tree(Path(tmp), subpackages)
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
               "--cache-dir", str(Path(tmp) / ".mypy_cache"), "-p", "edgeseg"]
        return subprocess.run(cmd, cwd=root).returncode


if __name__ == "__main__":
    raise SystemExit(main())
