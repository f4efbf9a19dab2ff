"""edgeseg: nnU-Net v2 (TotalSegmentator-MRI-class) segmentation on the scanner-side PC.

Data flows export -> bundle -> runtime:

* ``edgeseg.export`` (build machine, heavy extras): nnU-Net v2 results folder -> ONNX -> OpenVINO IR -> INT8.
* ``edgeseg.bundle``: the self-describing model bundle both sides agree on (``bundle.json`` + IR files).
* ``edgeseg.runtime`` (workstation, light): read -> preprocess -> infer -> postprocess -> write, and the watcher.

The library only logs; the command line (``edgeseg.cli``) configures logging.
"""
from __future__ import annotations

import logging

from edgeseg._offline import disable_openvino_telemetry

disable_openvino_telemetry()  # before any edgeseg module imports openvino: no network, nothing under ~/intel

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
