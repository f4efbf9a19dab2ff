"""Read stage: series on disk -> :class:`Volume` (array (I, J, K) float32, affine voxel -> RAS+ mm).

Public API:

* reading: :func:`discover_series` (every series at a path, headers only) -> :class:`SeriesRef`;
  :func:`read_series` -> :class:`Volume`; :func:`planes_from_affine` (the DICOM plane geometry of a voxel grid,
  the inverse of DICOM stacking).
* the header-level view of files and series (:mod:`edgeseg.runtime.read.headers`), shared by
  :func:`discover_series` and the watcher's completion tracker: :func:`file_kind` (what a file is: ``DICOM``,
  ``NIFTI``, ``PARREC`` or ``REC``), :func:`rec_files` / :func:`par_candidates` (PAR/REC pairing),
  :func:`read_dicom_header` (a header, or None for a file that is not DICOM), :func:`instance_from_header` ->
  :class:`Instance` (which series an instance belongs to (:func:`series_identity`: its SeriesInstanceUID, or one
  derived from its headers when it has none), whether the reader stacks it, its geometry), :class:`SkippedFiles`
  (what discovery skipped, per reason in words a PACS administrator can act on), :func:`split_series` (the 3-D
  stacks of a series that holds several at the same positions: echoes, image types, time points; ``ECHOES``:
  all or the first) -> refs with a :class:`Stack`,
  :func:`expected_instances` (how many instances the headers announce), :func:`dicom_geometry` and
  :func:`check_image_file` (a series' :class:`SeriesGeometry`, for NIfTI/PAR with whether the file opens);
  ``SeriesRef.name`` / ``.folder`` / ``.key`` (its output name, result folder and identity,
  :mod:`edgeseg.runtime.naming`).
* :func:`stamp_files` / :func:`fingerprint` (:class:`FileStamp`): the stat-only fingerprint of a series' input.
* :func:`inside_roots` / :class:`CandidateFilter`: the one symlink rule for paths below input roots, also used by
  the watcher (:mod:`edgeseg.runtime.read.paths`).
"""
from __future__ import annotations

from edgeseg.runtime.read._dicom import planes_from_affine
from edgeseg.runtime.read._parrec import par_candidates, rec_files
from edgeseg.runtime.read.fingerprint import FileStamp, fingerprint, stamp_files
from edgeseg.runtime.read.geometry import SeriesGeometry, world_axes
from edgeseg.runtime.read.headers import (ECHOES, REC, FileKind, Instance, SkippedFiles, check_image_file,
                                          dicom_geometry, expected_instances, file_kind, instance_from_header,
                                          read_dicom_header, series_identity, split_series)
from edgeseg.runtime.read.paths import CandidateFilter, inside_roots
from edgeseg.runtime.read.series import discover_series, read_series, series_to_segment
from edgeseg.runtime.read.series_ref import DICOM, NIFTI, PARREC, SeriesRef, Stack
from edgeseg.runtime.read.volume import DicomSource, Volume

__all__ = ["DICOM", "ECHOES", "NIFTI", "PARREC", "REC", "CandidateFilter", "DicomSource", "FileKind", "FileStamp",
           "Instance", "SeriesGeometry", "SeriesRef", "SkippedFiles", "Stack", "Volume", "check_image_file",
           "dicom_geometry", "discover_series", "expected_instances", "file_kind", "fingerprint", "inside_roots",
           "instance_from_header", "par_candidates", "planes_from_affine", "read_dicom_header", "read_series",
           "rec_files", "series_identity", "series_to_segment", "split_series", "stamp_files", "world_axes"]
