"""nnunetv2's own predictor on the same weights: the reference our predictions must match.

nnunetv2's ``initialize_from_trained_model_folder`` finds the trainer class by importing every trainer module,
including the Primus trainers, which import timm -> torchvision; PyPI's torchvision wheel is a CUDA build that
cannot load beside the CPU torch 2.13.0 used here. :func:`helpers.testmodels._nnunet_folder.nnunet_predictor`
substitutes only that lookup (nnunetv2's first, then the known module); everything else that runs is nnunetv2's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def reference_predictor(model_folder: Path, folds: tuple[int, ...] = (0,), tile_step_size: float = 0.5,
                        use_mirroring: bool = False):
    from helpers.testmodels._nnunet_folder import nnunet_predictor

    return nnunet_predictor(Path(model_folder), tile_step_size=tile_step_size, use_mirroring=use_mirroring,
                            folds=folds)


def reference_segmentation(model_folder: Path, image_ijk: np.ndarray, spacing_ijk: tuple[float, float, float],
                           **kwargs) -> np.ndarray:
    """nnunetv2's segmentation of an (i, j, k) array given in the orientation the model expects; returns the
    part's own labels in (i, j, k) order. The array is handed over in SimpleITK order (k, j, i)."""
    from helpers.testmodels._nnunet_folder import predict_with_nnunet

    seg = predict_with_nnunet(reference_predictor(model_folder, **kwargs),
                              np.asarray(image_ijk, dtype=np.float32).transpose(2, 1, 0),
                              [float(s) for s in spacing_ijk[::-1]])
    return np.asarray(seg).transpose(2, 1, 0)
