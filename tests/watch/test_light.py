"""The watcher is part of the light runtime: importing any of its modules pulls in no torch, onnx or nncf."""
from __future__ import annotations

import subprocess
import sys

MODULES = ["config", "jobs", "completion", "store", "observer", "budget", "service", "fake", "commands"]
HEAVY = {"torch", "onnx", "nncf", "nnunetv2", "dynamic_network_architectures"}


def test_watch_modules_import_no_heavy_package() -> None:
    code = "\n".join(f"import edgeseg.runtime.watch.{m}" for m in MODULES)
    code += "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not HEAVY & set(out.split())
