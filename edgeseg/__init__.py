"""edgeseg: nnU-Net v2 (TotalSegmentator-MRI-class) segmentation on the scanner-side PC.

Data flows export -> bundle -> runtime:

* ``edgeseg.export`` (build machine, heavy extras): nnU-Net v2 results folder -> ONNX -> OpenVINO IR -> INT8.
* ``edgeseg.bundle``: the self-describing model bundle both sides agree on (``bundle.json`` + IR files).
* ``edgeseg.runtime`` (workstation, light): read -> preprocess -> infer -> postprocess -> write, and the watcher.

The library only logs; the command line (``edgeseg.cli``) configures logging.
"""
from __future__ import annotations

import logging
from pathlib import Path

from edgeseg._memory import numpy_small_pages
from edgeseg._offline import disable_openvino_telemetry

disable_openvino_telemetry()  # before any edgeseg module imports openvino: no network, nothing under ~/intel
numpy_small_pages()  # before any edgeseg module imports numpy: no compaction stalls on big arrays' first touch

__version__ = "0.1.0"

# A source checkout keeps edgeseg.bundle, .export and .runtime in the top-level folders bundle/, export/ and
# runtime/ (pyproject's package-dir; an installed edgeseg has them inside this package): let Python find them
# there too, so `import edgeseg.runtime` works from a checkout without installing it.
_CHECKOUT = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "runtime").is_dir() and (_CHECKOUT / "runtime" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821 - a package's own __path__

logging.getLogger(__name__).addHandler(logging.NullHandler())
