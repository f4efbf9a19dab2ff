"""How to segment a series and which results to write: the options ``segment``, the writer and the watcher share.

:class:`SegmentOptions` is what :class:`edgeseg.runtime.segmenter.Segmenter` runs with (the command line builds
one from its flags, the watcher from ``watch_config.yaml``); its :class:`OutputOptions` is what
:func:`edgeseg.runtime.write.write_results` writes. Their defaults are the settings schema's
(:mod:`edgeseg.runtime.settings.schema`, the ``segment`` command's where a key has two).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.runtime.read.limits import ReadLimits
from edgeseg.runtime.settings.enums import Precision, SegType, values

#: DICOM-SEG types (:attr:`OutputOptions.seg_type`)
SEG_TYPES = values(SegType)


@dataclass(frozen=True)
class OutputOptions:
    """Which results to write beside the series (the multilabel NIfTI, its label sidecar and the run manifest
    are always written). These defaults are the settings schema's (:mod:`edgeseg.runtime.settings.schema` reads
    them from here, as it reads ``ReadLimits``'): the writer stays free of the schema's imports."""

    per_structure: bool = False
    dicom_seg: bool = True
    #: a DICOM Structured Report (TID 1500 measurement report: volume per structure) referencing the DICOM-SEG and
    #: the source series; DICOM input only, and only beside a DICOM-SEG (:mod:`edgeseg.runtime.write.sr`)
    dicom_sr: bool = True
    statistics: bool = True
    preview: bool = True
    #: DICOM-SEG type, one of :data:`SEG_TYPES`: "labelmap" (one frame per slice) or "binary" (one frame per
    #: structure and slice); :mod:`edgeseg.runtime.write.dicomseg` says why the default is what it is
    seg_type: str = SegType.BINARY

    def __post_init__(self) -> None:
        value = str(getattr(self.seg_type, "value", self.seg_type)).lower()
        if value not in SEG_TYPES:
            raise ValueError(f"seg_type must be one of {', '.join(SEG_TYPES)}, not {self.seg_type!r}")
        object.__setattr__(self, "seg_type", value)


@dataclass(frozen=True)
class SegmentOptions:
    """How to run. ``precision``: "auto" (fastest the device compiles), "int8", "fp16" or "fp32".
    ``variant``: bundle variant name (None: the most accurate). ``time_budget_s``: recorded in the manifest; the
    time-budget planner (:mod:`edgeseg.runtime.plan`: the watcher, ``segment --time-budget``) turns it into
    ``variant`` and ``tile_step_size``. The defaults are those of ``segment`` and ``run`` in the settings schema,
    which reads them from here."""

    device: str = "CPU"
    precision: str = Precision.AUTO
    variant: str | None = None
    threads: int | None = None
    cache_dir: Path | None = None
    time_budget_s: float | None = None
    #: override the bundle's tile step (the planner may coarsen it to meet a budget)
    tile_step_size: float | None = None
    outputs: OutputOptions = field(default_factory=OutputOptions)
    #: what the input's headers may promise (None: the :class:`~edgeseg.runtime.read.limits.ReadLimits` defaults)
    limits: ReadLimits | None = None
