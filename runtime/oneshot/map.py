"""The MONAI Application Package (MAP) side of ``edgeseg run`` in the module image (top-level ``Dockerfile``): the
image is laid out as the MAP specification asks (``/etc/holoscan/app.json`` and ``pkg.json``, the application in
``/opt/holoscan/app/``, the bundle in ``/opt/holoscan/models/edgeseg/``, documents in ``/opt/holoscan/docs/``), and
this module is its *manifest export* method: when the host mounts ``/var/run/holoscan/export/`` (or one of its
``app``, ``config``, ``models``, ``docs`` sub-folders), ``edgeseg run`` copies what is asked for there and exits
instead of running. Printing the manifests to the console is ``edgeseg run --show-manifests``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

EXPORT_ROOT = Path("/var/run/holoscan/export")
APP_MANIFEST, PKG_MANIFEST = Path("/etc/holoscan/app.json"), Path("/etc/holoscan/pkg.json")
APP_ROOT, MODEL_ROOT, DOCS_ROOT = Path("/opt/holoscan/app"), Path("/opt/holoscan/models"), Path("/opt/holoscan/docs")


def manifests(env: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """(app.json, pkg.json) of this image (``HOLOSCAN_APP_MANIFEST_PATH``/``HOLOSCAN_PKG_MANIFEST_PATH``)."""
    env = os.environ if env is None else env
    return (Path(env.get("HOLOSCAN_APP_MANIFEST_PATH") or APP_MANIFEST),
            Path(env.get("HOLOSCAN_PKG_MANIFEST_PATH") or PKG_MANIFEST))


def in_a_package(env: Mapping[str, str] | None = None) -> bool:
    """True inside the MAP image (its application manifest exists)."""
    return manifests(env)[0].is_file()


def _copy_tree(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True)


def export(root: Path = EXPORT_ROOT, env: Mapping[str, str] | None = None) -> list[Path]:
    """The specification's manifest export: each of ``root``'s ``app``/``config``/``models``/``docs`` sub-folders
    that exists gets its part; when none exists, ``root`` gets all four. Returns the folders written."""
    app_json, pkg_json = manifests(env)
    config_files = [p for p in (app_json, pkg_json, Path("/var/holoscan/app.yaml")) if p.is_file()]
    parts = {
        "app": lambda d: _copy_tree(APP_ROOT, d),
        "config": lambda d: [shutil.copy2(p, d / p.name) for p in config_files],
        "models": lambda d: _copy_tree(MODEL_ROOT, d),
        "docs": lambda d: _copy_tree(DOCS_ROOT, d),
    }
    chosen = [name for name in parts if (root / name).is_dir()]
    written = []
    for name in chosen or list(parts):
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        parts[name](target)
        written.append(target)
    return written


def export_requested(root: Path = EXPORT_ROOT, env: Mapping[str, str] | None = None) -> bool:
    """True inside the image when the host mounted the export folder."""
    return in_a_package(env) and root.is_dir()
