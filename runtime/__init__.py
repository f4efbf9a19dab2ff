"""edgeseg.runtime: the workstation side. No torch, onnx or nncf is imported here (a test proves it).

Stages, one module each: ``read`` (series -> :class:`Volume`) -> ``preprocess`` (nnU-Net's transpose, crop,
normalize, resample) -> ``infer`` (OpenVINO sliding window) -> ``postprocess`` (resample back, argmax, merge
parts, revert crop/transpose) -> ``write`` (masks, DICOM-SEG, statistics, preview, manifest).
``segment`` chains them for one series; ``watch`` runs them hands-free on an export folder.
"""
from __future__ import annotations
