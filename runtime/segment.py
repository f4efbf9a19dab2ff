"""Segment one series with a bundle: read -> preprocess -> infer -> postprocess -> write.

This is the one entry point the command line (``edgeseg segment``) and the watcher call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class OutputOptions:
    """Which results to write beside the series (the multilabel NIfTI, its label sidecar and the run manifest
    are always written)."""

    per_structure: bool = False
    dicom_seg: bool = True
    statistics: bool = True
    preview: bool = True


@dataclass(frozen=True)
class SegmentOptions:
    """How to run. ``precision``: "auto" (fastest the device compiles), "int8", "fp16" or "fp32".
    ``variant``: bundle variant name, or None for the planner/most accurate. ``time_budget_s``: the planner picks
    the most accurate variant and tile step predicted to fit (None: most accurate)."""

    device: str = "CPU"
    precision: str = "auto"
    variant: str | None = None
    threads: int | None = None
    cache_dir: Path | None = None
    time_budget_s: float | None = None
    outputs: OutputOptions = field(default_factory=OutputOptions)


@dataclass(frozen=True)
class SegmentResult:
    """Where the results landed: ``output_dir`` is the finished ``<name>.edgeseg`` folder beside the series;
    ``files`` maps a role ("labelmap", "labels", "statistics", "preview", "dicom_seg", "manifest") to its path."""

    output_dir: Path
    files: dict[str, Path]
    manifest: dict[str, Any]


ProgressCallback = Callable[[str, float], None]
