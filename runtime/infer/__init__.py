"""Infer stage: OpenVINO models run over the preprocessed volume with nnU-Net's sliding window."""
from __future__ import annotations
