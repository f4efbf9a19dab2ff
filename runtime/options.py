"""How to segment a series and which results to write: the options ``segment``, the writer and the watcher share.

:class:`SegmentOptions` is what :func:`edgeseg.runtime.segment.segment_series` runs with (the command line builds
one from its flags, the watcher from ``watch_config.yaml``); its :class:`OutputOptions` is what
:func:`edgeseg.runtime.write.write_results` writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.runtime.read.limits import ReadLimits


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
    ``variant``: bundle variant name (None: the most accurate). ``time_budget_s``: recorded in the manifest; the
    time-budget planner (:mod:`edgeseg.runtime.plan`: the watcher, ``segment --time-budget``) turns it into
    ``variant`` and ``tile_step_size``."""

    device: str = "CPU"
    precision: str = "auto"
    variant: str | None = None
    threads: int | None = None
    cache_dir: Path | None = None
    time_budget_s: float | None = None
    #: override the bundle's tile step (the planner may coarsen it to meet a budget)
    tile_step_size: float | None = None
    outputs: OutputOptions = field(default_factory=OutputOptions)
    #: what the input's headers may promise (None: the :class:`~edgeseg.runtime.read.limits.ReadLimits` defaults)
    limits: ReadLimits | None = None
