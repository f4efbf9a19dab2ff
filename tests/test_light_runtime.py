"""The runtime stays light: importing it (every module of it) pulls in no torch, onnx or nncf."""
from __future__ import annotations

import subprocess
import sys

RUNTIME_MODULES = [
    "edgeseg.runtime", "edgeseg.runtime.segment", "edgeseg.runtime.read", "edgeseg.runtime.write",
    "edgeseg.runtime.preprocess", "edgeseg.runtime.postprocess", "edgeseg.runtime.resample",
    "edgeseg.runtime.infer.engine", "edgeseg.runtime.infer.sliding_window", "edgeseg.runtime.commands",
    "edgeseg.bundle", "edgeseg.cli",
]
HEAVY = ("torch", "onnx", "nncf", "nnunetv2", "dynamic_network_architectures")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_edgeseg_runtime_imports_no_heavy_package():
    loaded = _loaded_after("import edgeseg.runtime")
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}


def test_every_runtime_module_and_the_cli_parser_stay_light():
    code = "\n".join(f"import {m}" for m in RUNTIME_MODULES) + "\nimport edgeseg.cli as c\nc.build_parser()"
    loaded = _loaded_after(code)
    heavy = sorted({m.split(".")[0] for m in loaded} & set(HEAVY))
    assert heavy == [], f"runtime imports pulled in {heavy}"
