"""Read stage: series on disk -> :class:`Volume` (array (I, J, K) float32, affine voxel -> RAS+ mm).

Public API: :func:`discover_series`, :func:`read_series`, :class:`SeriesRef`, :class:`Volume` and
:func:`read_dicom_header` (header-only read, None for non-DICOM files; the watcher uses it too).
"""
from __future__ import annotations

from edgeseg.runtime.read._dicom import read_dicom_header
from edgeseg.runtime.read.series import discover_series, read_series
from edgeseg.runtime.read.series_ref import SeriesRef
from edgeseg.runtime.read.volume import Volume

__all__ = ["SeriesRef", "Volume", "discover_series", "read_dicom_header", "read_series"]
