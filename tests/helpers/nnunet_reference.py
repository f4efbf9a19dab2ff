"""nnunetv2's own predictor on the same weights: the reference our predictions must match.

nnunetv2's ``initialize_from_trained_model_folder`` finds the trainer class by importing every trainer module,
including the Primus trainers, which import timm -> torchvision. PyPI's torchvision wheels are CUDA builds that
cannot load beside the CPU torch 2.13.0 used here ("operator torchvision::nms does not exist"). So we build the
network with nnunetv2's own ``get_network_from_plans`` and hand it to ``nnUNetPredictor.manual_initialization``:
the preprocessing, sliding window, resampling and export that run are nnunetv2's, on the same checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def reference_predictor(model_folder: Path, folds: tuple[int, ...] = (0,), tile_step_size: float = 0.5,
                        use_mirroring: bool = False):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model_folder = Path(model_folder)
    plans = json.loads((model_folder / "plans.json").read_text())
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    plans_manager = PlansManager(plans)
    params = []
    for f in folds:
        ckpt = torch.load(model_folder / f"fold_{f}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        params.append(ckpt["network_weights"])
    configuration_manager = plans_manager.get_configuration(ckpt["init_args"]["configuration"])
    num_in = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    label_manager = plans_manager.get_label_manager(dataset_json)
    arch = configuration_manager.network_arch_class_name
    net = get_network_from_plans(arch, configuration_manager.network_arch_init_kwargs,
                                 configuration_manager.network_arch_init_kwargs_req_import, num_in,
                                 label_manager.num_segmentation_heads, allow_init=False, deep_supervision=False)
    net.load_state_dict(params[0])
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                device=torch.device("cpu"), verbose=False, verbose_preprocessing=False,
                                allow_tqdm=False)
    axes = ckpt.get("inference_allowed_mirroring_axes") if use_mirroring else None
    predictor.manual_initialization(net, plans_manager, configuration_manager, params, dataset_json,
                                    ckpt["trainer_name"], axes if use_mirroring else None)
    return predictor


def reference_segmentation(model_folder: Path, image_ijk: np.ndarray, spacing_ijk: tuple[float, float, float],
                           **kwargs) -> np.ndarray:
    """nnunetv2's segmentation of an (i, j, k) array given in the orientation the model expects; returns the
    part's own labels in (i, j, k) order. The array is handed over in SimpleITK order (k, j, i)."""
    predictor = reference_predictor(model_folder, **kwargs)
    data = np.asarray(image_ijk, dtype=np.float32).transpose(2, 1, 0)[None]
    seg = predictor.predict_single_npy_array(data, {"spacing": [float(s) for s in spacing_ijk[::-1]]})
    return np.asarray(seg).transpose(2, 1, 0)
