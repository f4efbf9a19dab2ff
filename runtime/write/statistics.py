"""Per-structure statistics of a multilabel mask: voxel count, volume in ml, mean input intensity.

Volume of one voxel = |det(affine[:3, :3])| mm^3 (affine voxel -> RAS+ mm of the input volume), / 1000 for ml.
``mean_intensity`` is the mean of ``Volume.array`` (float32, rescale applied) over the structure's voxels, or
null when the structure is absent. Every label of the model is reported, absent ones with 0 voxels.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeseg.runtime.read.volume import Volume
from edgeseg.typing import StrPath

log = logging.getLogger(__name__)

STATISTICS_FILE = "statistics.json"


def compute_statistics(volume: Volume, labelmap: np.ndarray, labels: Mapping[int, str]) -> dict[str, Any]:
    """Statistics as a JSON-ready dict::

        {"voxel_volume_ml": float, "units": {...},
         "structures": {"spleen": {"label": 1, "voxels": int, "volume_ml": float, "mean_intensity": float|None},
                        ...}}

    Structures are keyed by label name, in label order; label values found in the mask but missing from
    ``labels`` are reported as ``label_<n>``.
    """
    if tuple(labelmap.shape) != tuple(volume.array.shape):
        raise ValueError(f"labelmap shape {labelmap.shape} differs from the volume's {volume.array.shape}")
    voxel_ml = float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    flat = np.asarray(labelmap).ravel().astype(np.int64, copy=False)
    top = max([int(flat.max()) if flat.size else 0, *[int(k) for k in labels]] or [0])
    counts = np.bincount(flat, minlength=top + 1)
    sums = np.bincount(flat, weights=volume.array.ravel().astype(np.float64), minlength=top + 1)
    names = {int(k): str(v) for k, v in labels.items()}
    for found in np.flatnonzero(counts[1:]) + 1:
        names.setdefault(int(found), f"label_{int(found)}")
    structures: dict[str, Any] = {}
    for value in sorted(names):
        n = int(counts[value]) if value < counts.size else 0
        structures[names[value]] = {
            "label": value,
            "voxels": n,
            "volume_ml": round(n * voxel_ml, 6),
            "mean_intensity": (float(sums[value] / n) if n else None),
        }
    return {
        "voxel_volume_ml": voxel_ml,
        "units": {"volume_ml": "millilitre", "mean_intensity": "input image units (rescale applied)"},
        "structures": structures,
    }


def write_statistics(path: StrPath, stats: Mapping[str, Any]) -> Path:
    """Write the statistics dict as indented JSON."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(stats, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    return path
