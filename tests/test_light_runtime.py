"""The runtime stays light: importing it, or any module of the runtime, the watcher, the bundle loader and the
command line, pulls in no torch, onnx or nncf. Modules are found in the source folders, so a new or moved module is
covered without editing this list."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: import name -> folder (pyproject's package-dir) of everything the base install runs; export/ is the heavy side
LIGHT_PACKAGES = {"edgeseg": REPO / "edgeseg", "edgeseg.bundle": REPO / "bundle", "edgeseg.runtime": REPO / "runtime"}
HEAVY = ("torch", "onnx", "nncf", "nnunetv2", "dynamic_network_architectures")


def light_modules() -> list[str]:
    """Every module of the light packages (``edgeseg.runtime.watch.service``, ...), from the source tree."""
    names = []
    for package, folder in LIGHT_PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            names.append(".".join([package, *parts]))
    return names


def _heavy_loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return sorted(set(out.split()) & set(HEAVY))


def test_the_module_list_covers_the_runtime_and_the_watcher() -> None:
    modules = light_modules()
    for expected in ("edgeseg.cli", "edgeseg.bundle.schema", "edgeseg.runtime.segment",
                     "edgeseg.runtime.infer.engine", "edgeseg.runtime.write.atomic", "edgeseg.runtime.watch.service",
                     "edgeseg.runtime.watch.commands"):
        assert expected in modules


def test_import_edgeseg_runtime_imports_no_heavy_package() -> None:
    assert _heavy_loaded_after("import edgeseg.runtime") == []


def test_every_light_module_and_the_cli_parser_stay_light() -> None:
    code = "\n".join(f"import {m}" for m in light_modules()) + "\nimport edgeseg.cli as c\nc.build_parser()"
    heavy = _heavy_loaded_after(code)
    assert heavy == [], f"runtime imports pulled in {heavy}"
