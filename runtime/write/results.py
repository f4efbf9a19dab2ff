"""Write every requested result role for one series into ``<name>.edgeseg/`` beside it, atomically.

Layout of ``<name>.edgeseg/``::

    seg.nii.gz          multilabel mask, input shape and affine (always)
    seg.labels.json     {"1": "spleen", ...} (always)
    structures/*.nii.gz one 0/1 mask per label (OutputOptions.per_structure)
    statistics.json     voxels, volume_ml, mean_intensity per structure (OutputOptions.statistics)
    preview.png         overlay on 5 slices with a legend (OutputOptions.preview)
    seg.dcm             DICOM-SEG, DICOM input only, when at least one structure is present (OutputOptions.dicom_seg,
                        of type OutputOptions.seg_type)
    manifest.json       the caller's manifest + outputs, series, series_key, writer and time (always)

Results land in the DICOM series' folder (``Volume.source``) or beside the NIfTI/PAR file, unless ``out_parent``
is given. The folder is published only when every role was written; a previous result of the same series (its
manifest's ``series_key``) is replaced, one of another series never (see ``ResultFolder``), and a stale
``<name>.edgeseg-error.json`` is removed after success. A DICOM-SEG that highdicom refuses (an unusual source) does
not fail the run: the other results are published and the manifest records the reason under ``warnings``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeseg.errors import OutputError
from edgeseg.runtime.naming import series_key
from edgeseg.runtime.options import OutputOptions
from edgeseg.runtime.read.paths import fs_text
from edgeseg.runtime.read.volume import Volume
from edgeseg.runtime.write.atomic import ResultFolder, clear_error_file
from edgeseg.runtime.write.dicomseg import DICOM_SEG_FILE, write_dicom_seg
from edgeseg.runtime.write.manifest import MANIFEST_FILE, write_manifest
from edgeseg.runtime.write.nifti import (LABELMAP_FILE, LABELS_FILE, STRUCTURES_DIR, write_label_sidecar,
                                         write_labelmap, write_structures)
from edgeseg.runtime.write.preview import PREVIEW_FILE, write_preview
from edgeseg.runtime.write.statistics import STATISTICS_FILE, compute_statistics, write_statistics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentResult:
    """Where the results landed: ``output_dir`` is the finished ``<name>.edgeseg`` folder beside the series;
    ``files`` maps a role ("labelmap", "labels", "statistics", "preview", "dicom_seg", "manifest") to its path."""

    output_dir: Path
    files: dict[str, Path]
    manifest: dict[str, Any]
    #: seconds per stage of this run (read, preprocess, compile, infer, postprocess, write), when known
    timings: dict[str, float] | None = None


def series_folder(volume: Volume) -> Path:
    """Where results go by default: the DICOM series' folder, or the folder holding the NIfTI/PAR file."""
    source = Path(volume.source)
    return source if volume.kind == "dicom" and source.is_dir() else source.parent


def _series_record(volume: Volume) -> dict[str, Any]:
    return {
        "kind": volume.kind,
        "name": volume.name,
        "source": str(volume.source),
        "series_uid": volume.series_uid,
        "description": volume.description,
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "affine_ras": np.asarray(volume.affine).round(6).tolist(),
        "n_dicom_files": len(volume.dicom_files),
    }


def write_results(volume: Volume, labelmap: np.ndarray, labels: Mapping[int, str], options: OutputOptions,
                  manifest: Mapping[str, Any], out_parent: Path | None = None) -> SegmentResult:
    """Write the results of one series; returns where they landed.

    ``labelmap``: integer array of exactly ``volume.shape`` (I, J, K), 0 = background, values = keys of
    ``labels``. ``options`` selects the optional roles. ``manifest``: the caller's run record, extended with
    ``outputs`` (role -> file name), ``series``, ``labels_present`` and, for DICOM-SEG, ``dicom_seg_segments``.
    Raises :class:`OutputError` (disk full, no permission) with nothing published; ValueError for a labelmap of
    the wrong shape or type.
    """
    labelmap = np.asarray(labelmap)
    if tuple(labelmap.shape) != tuple(volume.shape):
        raise ValueError(f"labelmap shape {labelmap.shape} differs from the volume's {volume.shape}: refusing to "
                         "write a mask on another grid")
    if not np.issubdtype(labelmap.dtype, np.integer):
        raise ValueError(f"labelmap must hold integer labels, not {labelmap.dtype}")
    labels = {int(k): str(v) for k, v in labels.items()}
    parent = Path(out_parent) if out_parent is not None else series_folder(volume)
    record = dict(manifest)
    warnings: list[str] = list(record.get("warnings", []))
    outputs: dict[str, str] = {}
    present = [int(v) for v in np.unique(labelmap) if v > 0]

    owner = series_key(volume.kind, os.path.abspath(volume.source), volume.series_uid)
    record["series_key"] = fs_text(owner)
    with ResultFolder(parent, volume.name, owner=owner) as folder:
        root = folder.path
        write_labelmap(root / LABELMAP_FILE, labelmap, volume, labels)
        outputs["labelmap"] = LABELMAP_FILE
        write_label_sidecar(root / LABELS_FILE, labels)
        outputs["labels"] = LABELS_FILE
        if options.per_structure:
            write_structures(root / STRUCTURES_DIR, labelmap, volume, labels)
            outputs["structures"] = STRUCTURES_DIR
        if options.statistics:
            write_statistics(root / STATISTICS_FILE, compute_statistics(volume, labelmap, labels))
            outputs["statistics"] = STATISTICS_FILE
        if options.preview:
            write_preview(root / PREVIEW_FILE, volume, labelmap, labels)
            outputs["preview"] = PREVIEW_FILE
        if options.dicom_seg and volume.kind == "dicom":
            if not present:
                warnings.append("no structure found: no DICOM-SEG written")
            else:
                try:
                    segments = write_dicom_seg(root / DICOM_SEG_FILE, volume, labelmap, labels,
                                               segmentation_type=options.seg_type, bundle=record.get("bundle"))
                except (OSError, OutputError):
                    raise
                except Exception as err:  # highdicom refuses some sources; keep the other results
                    log.error("series %s: DICOM-SEG not written (%s: %s)", volume.series_uid,
                              type(err).__name__, err)
                    warnings.append(f"DICOM-SEG not written: {type(err).__name__}: {err}")
                    (root / DICOM_SEG_FILE).unlink(missing_ok=True)
                else:
                    outputs["dicom_seg"] = DICOM_SEG_FILE
                    record["dicom_seg_segments"] = {str(n): s for n, s in segments.items()}
        outputs["manifest"] = MANIFEST_FILE
        record["outputs"] = outputs
        record["series"] = _series_record(volume)
        record["labels_present"] = {str(v): labels.get(v, f"label_{v}") for v in present}
        if warnings:
            record["warnings"] = warnings
        written = write_manifest(root / MANIFEST_FILE, record)
    try:
        clear_error_file(parent, volume.name)
    except OutputError as err:  # the results are published; a stale error file is only a nuisance
        log.warning("%s", err)
    final = folder.final_path
    return SegmentResult(output_dir=final, files={role: final / name for role, name in outputs.items()},
                         manifest=written)
