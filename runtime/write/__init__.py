"""Write stage: results of one series into ``<name>.edgeseg/`` beside it, published atomically.

Public API: :func:`write_results` (every requested role at once; returns a :class:`SegmentResult`, whose
``status`` is :data:`COMPLETE` or :data:`PARTIAL`; :func:`describe_missing` words the missing outputs), the
per-role writers (:func:`write_labelmap`, :func:`read_label_map`, :func:`compute_statistics`, :func:`write_preview`,
:func:`write_dicom_seg`, :func:`write_dicom_sr`, :func:`write_manifest`) and the atomic helpers (:class:`ResultFolder`,
:func:`write_error_file`, :func:`clear_error_file`) and the output names (:func:`is_edgeseg_output`,
:func:`result_dir_name`, :func:`error_file_name`, from :mod:`edgeseg.runtime.naming`).
"""
from __future__ import annotations

from edgeseg.runtime.naming import error_file_name, is_edgeseg_output, result_dir_name
from edgeseg.runtime.write.atomic import ResultFolder, clear_error_file, write_error_file
from edgeseg.runtime.write.dicomseg import write_dicom_seg
from edgeseg.runtime.write.manifest import write_manifest
from edgeseg.runtime.write.nifti import read_label_map, write_label_sidecar, write_labelmap, write_structures
from edgeseg.runtime.write.preview import render_preview, write_preview
from edgeseg.runtime.write.results import (COMPLETE, PARTIAL, SegmentResult, describe_missing, series_folder,
                                           write_results)
from edgeseg.runtime.write.sr import write_dicom_sr
from edgeseg.runtime.write.statistics import compute_statistics, write_statistics

__all__ = [
    "COMPLETE", "PARTIAL", "ResultFolder", "SegmentResult", "clear_error_file", "compute_statistics",
    "describe_missing", "error_file_name", "is_edgeseg_output", "read_label_map", "render_preview", "result_dir_name",
    "series_folder", "write_dicom_seg", "write_dicom_sr", "write_error_file",
    "write_label_sidecar", "write_labelmap", "write_manifest", "write_preview", "write_results",
    "write_statistics", "write_structures",
]
