"""Prove that the Windows app's dependency set exists: resolve the runtime requirements for ``win_amd64`` as binary
wheels only, on a machine that is not Windows.

Vendor AI platforms run a self-contained Windows executable (the frozen app, ``edgeseg run``). It is built on
Windows from the same ``pyproject.toml`` as the Linux app (``build.py`` installs the repository without extras plus
PyInstaller). This check runs what that installation would need, for Windows::

    pip download --dest TMP --platform win_amd64 --python-version 3.11 --implementation cp --only-binary=:all: \\
        <every runtime dependency of pyproject.toml> <the installer extra (pyinstaller)>

with dependencies (the whole set is resolved, not only the direct requirements). ``--only-binary=:all:`` means no
source build is possible: a dependency without a Windows wheel for that Python fails the check by name (the
DICOM decoders python-gdcm and pyjpegls and the DICOM node's pynetdicom are the likely ones). It needs PyPI (or the
configured index) and downloads ~200 MB (a few seconds from a local mirror or pip's cache).

    python installer/windows_wheels.py                    # into a temporary folder, removed afterwards
    python installer/windows_wheels.py --dest wheels/ --python-version 3.12 --report wheels.json

Exit code 0 when every requirement resolved to wheels; 1 with pip's own message otherwise. Standard library only.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PLATFORM = "win_amd64"
#: the Python the Windows app is built with (the Linux build's too: Debian 12 / python.org 3.11)
PYTHON_VERSION = "3.11"


class WheelCheckError(Exception):
    """The Windows dependency set did not resolve; the message names what failed."""


def _dependency_arrays(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """``[project] dependencies`` and ``[project.optional-dependencies]`` of a pyproject.toml (tomllib on 3.11+, a
    small reader of the two arrays otherwise)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = None  # type: ignore[assignment]
    if tomllib is not None:
        data = tomllib.loads(text)
        project = data.get("project", {})
        return list(project.get("dependencies", [])), {k: list(v) for k, v in
                                                       project.get("optional-dependencies", {}).items()}

    def strings(block: str) -> list[str]:
        return re.findall(r'"([^"]+)"', re.sub(r"#[^\n]*", "", block))

    deps = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M)
    extras: dict[str, list[str]] = {}
    section = re.search(r"^\[project\.optional-dependencies\]\n(.*?)(?=^\[)", text, re.S | re.M)
    if section:
        for name, block in re.findall(r"^([\w-]+)\s*=\s*\[(.*?)^\]", section.group(1), re.S | re.M):
            extras[name] = strings(block)
    return (strings(deps.group(1)) if deps else []), extras


def runtime_requirements(pyproject: Path = REPO / "pyproject.toml",
                         extras: tuple[str, ...] = ("installer",)) -> list[str]:
    """The requirements the frozen app is built from: the runtime dependencies of ``pyproject.toml`` (the same list
    ``build.py``'s ``pip install <repo>`` installs) and the ``extras`` named (``installer``: PyInstaller)."""
    deps, optional = _dependency_arrays(pyproject.read_text(encoding="utf-8"))
    out = list(deps)
    for extra in extras:
        if extra not in optional:
            raise WheelCheckError(f"{pyproject} has no extra {extra!r} (it has {', '.join(optional) or 'none'})")
        out += [r for r in optional[extra] if not r.startswith("edgeseg[")]
    if not out:
        raise WheelCheckError(f"no dependencies found in {pyproject}")
    return out


def check_windows_wheels(dest: Path | None = None, python_version: str = PYTHON_VERSION,
                         requirements: list[str] | None = None, pip: list[str] | None = None,
                         timeout: float = 1800) -> dict[str, Any]:
    """Download the ``win_amd64`` wheels of ``requirements`` (default :func:`runtime_requirements`) with their
    dependencies into ``dest`` (default: a temporary folder, removed afterwards). Returns ``{"platform",
    "python_version", "requirements", "wheels": [file names], "mb"}``; raises :class:`WheelCheckError` with pip's
    message when a requirement has no such wheel or the index cannot be reached."""
    requirements = requirements if requirements is not None else runtime_requirements()
    pip = pip or [sys.executable, "-m", "pip"]
    own = dest is None
    folder = Path(tempfile.mkdtemp(prefix="edgeseg-win-wheels-")) if own else Path(dest)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [*pip, "download", "--dest", str(folder), "--platform", PLATFORM, "--python-version", python_version,
           "--implementation", "cp", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
           *requirements]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise WheelCheckError(f"the {PLATFORM} dependency set for Python {python_version} did not resolve to "
                                  f"binary wheels (pip exit {proc.returncode}):\n{tail}")
        wheels = sorted(p.name for p in folder.iterdir() if p.suffix == ".whl")
        not_wheels = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".whl")
        if not_wheels:
            raise WheelCheckError(f"pip fetched files that are not wheels: {', '.join(not_wheels)}")
        bad = [w for w in wheels if not (w.endswith("-none-any.whl") or w.endswith(f"-{PLATFORM}.whl"))]
        if bad:
            raise WheelCheckError(f"wheels for another platform: {', '.join(bad)}")
        size = sum((folder / w).stat().st_size for w in wheels)
        return {"platform": PLATFORM, "python_version": python_version, "requirements": requirements,
                "wheels": wheels, "mb": round(size / 1e6, 1)}
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def distribution_name(wheel: str) -> str:
    """``python_gdcm-3.2.6-cp311-cp311-win_amd64.whl`` -> ``python-gdcm`` (PEP 503 normalised)."""
    return re.sub(r"[-_.]+", "-", wheel.split("-", 1)[0]).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dest", type=Path, help="keep the wheels here (default: a temporary folder)")
    parser.add_argument("--python-version", default=PYTHON_VERSION, help=f"default {PYTHON_VERSION}")
    parser.add_argument("--report", type=Path, help="write the resolved set as JSON here")
    args = parser.parse_args(argv)
    try:
        report = check_windows_wheels(args.dest, args.python_version)
    except (WheelCheckError, subprocess.TimeoutExpired) as err:
        print(f"[windows wheels] FAILED: {err}", flush=True)
        return 1
    print(f"[windows wheels] {len(report['wheels'])} wheels for {PLATFORM}, Python {report['python_version']} "
          f"({report['mb']} MB): {', '.join(report['wheels'])}", flush=True)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
