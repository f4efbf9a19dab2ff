"""Synthetic models and bundles built with OpenVINO's opset (no torch): tests of geometry and aggregation.

* ``threshold`` model: 2 outputs, logits = [0, x - t] so label 1 marks voxels brighter than ``t`` (after the
  bundle's normalization). A bright landmark voxel therefore must come back at the same world position.
* ``constant`` model: every output logit equals a constant per class, whatever the input.
* ``identity`` model: the first output repeats the input, others are zero (tests tile placement).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _model(kind: str, patch: Sequence[int], num_outputs: int, threshold: float = 0.5,
           constants: Sequence[float] | None = None) -> Any:
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 1, *patch], np.float32, name="image")
    if kind == "threshold":
        zeros = ops.multiply(x, ops.constant(np.float32(0.0)))
        out = ops.concat([zeros, ops.subtract(x, ops.constant(np.float32(threshold)))], 1)
    elif kind == "constant":
        values = np.asarray(constants, dtype=np.float32).reshape(1, num_outputs, 1, 1, 1)
        zeros = ops.multiply(x, ops.constant(np.float32(0.0)))
        out = ops.add(zeros, ops.constant(values))
    elif kind == "identity":
        parts = [x] + [ops.multiply(x, ops.constant(np.float32(0.0))) for _ in range(num_outputs - 1)]
        out = ops.concat(parts, 1) if num_outputs > 1 else x
    else:
        raise ValueError(kind)
    return ov.Model([out], [x], kind)


def make_bundle(root: Path, kind: str = "threshold", patch: Sequence[int] = (8, 8, 8),
                spacing: Sequence[float] = (1.0, 1.0, 1.0), reorient: str = "none", num_outputs: int = 2,
                normalization: str = "NoNormalization", tile_step_size: float = 0.5,
                pre_resample: dict | None = None, parts: int = 1, use_mirroring: bool = False,
                transpose_forward: Sequence[int] = (0, 1, 2), **model_kwargs: Any) -> Path:
    """Write a valid bundle folder at ``root`` with ``parts`` identical synthetic parts; returns ``root``."""
    import openvino as ov

    from edgeseg.bundle.hashing import hash_tree

    root = Path(root)
    tb = [int(i) for i in np.argsort(transpose_forward)]
    part_entries = []
    labels = {}
    for p in range(parts):
        rel = f"v/part{p}"
        (root / rel).mkdir(parents=True, exist_ok=True)
        ov.save_model(_model(kind, patch, num_outputs, **model_kwargs), str(root / rel / "fp32.xml"),
                      compress_to_fp16=False)
        label_map = {}
        for c in range(1, num_outputs):
            merged = p * (num_outputs - 1) + c
            labels[str(merged)] = f"structure_{merged}"
            label_map[str(c)] = merged
        part_entries.append({
            "name": f"part{p}", "label_map": label_map, "num_input_channels": 1, "num_outputs": num_outputs,
            "spacing": [float(s) for s in spacing], "patch_size": [int(s) for s in patch],
            "transpose_forward": [int(i) for i in transpose_forward], "transpose_backward": tb,
            "normalization": [{"scheme": normalization, "use_mask_for_norm": False, "intensity_properties": {}}],
            "resampling_data": {"order": 3, "order_z": 0, "force_separate_z": None, "anisotropy_threshold": 3.0},
            "resampling_probabilities": {"order": 1, "order_z": 0, "force_separate_z": None,
                                         "anisotropy_threshold": 3.0},
            "tile_step_size": tile_step_size, "use_gaussian": True, "use_mirroring": use_mirroring,
            "mirror_axes": [0, 1, 2], "folds": ["0"],
            "models": {"fp32": {"xml": f"{rel}/fp32.xml", "bin": f"{rel}/fp32.bin"}},
        })
    manifest = {
        "schema_version": 1, "name": f"synthetic-{kind}", "description": "test", "intended_use": "tests only",
        "labels": labels,
        "variants": [{"name": "v", "rank": 0, "reorient": reorient, "pre_resample": pre_resample,
                      "parts": part_entries}],
        "files": hash_tree(root), "validation_report": None,
    }
    (root / "bundle.json").write_text(json.dumps(manifest, indent=1))
    return root
