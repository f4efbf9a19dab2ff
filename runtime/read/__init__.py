"""Read stage: series on disk -> :class:`Volume` (array (I, J, K) float32, affine voxel -> RAS+ mm).

Public API: :func:`discover_series`, :func:`read_series`, :class:`SeriesRef`, :class:`Volume` and
:func:`read_dicom_header` (header-only read, None for non-DICOM files; the watcher uses it too) and
:func:`planes_from_affine` (the DICOM plane geometry of a voxel grid, the inverse of DICOM stacking), and
:func:`inside_roots` / :class:`CandidateFilter` (the one symlink rule for paths below input roots, also used by the
watcher; :mod:`edgeseg.runtime.read.paths`).
"""
from __future__ import annotations

from edgeseg.runtime.read._dicom import planes_from_affine, read_dicom_header
from edgeseg.runtime.read.paths import CandidateFilter, inside_roots
from edgeseg.runtime.read.series import discover_series, read_series
from edgeseg.runtime.read.series_ref import SeriesRef
from edgeseg.runtime.read.volume import Volume

__all__ = ["CandidateFilter", "SeriesRef", "Volume", "discover_series", "inside_roots", "planes_from_affine",
           "read_dicom_header", "read_series"]
