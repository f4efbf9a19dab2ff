"""edgeseg.export (build machine): nnU-Net v2 results folder -> ONNX -> OpenVINO IR -> INT8 (NNCF) -> bundle.

Needs the ``export`` extra (torch, onnx, nncf, dynamic-network-architectures); nothing here is imported by the
runtime. Modules: ``model_folder`` (find and validate the nnU-Net folder or zip), ``network`` (build the net
from plans and load checkpoints safely), ``convert`` (ONNX + OpenVINO IR), ``calibration`` (real patches),
``quantize`` (NNCF), ``pipeline`` (the whole export with validation), ``commands`` (CLI).
"""
from __future__ import annotations
