"""Write nnU-Net v2 trained-model folders exactly the way nnU-Net v2 (2.5 .. 2.8) writes them.

Shared by the test-model generator :mod:`helpers.testmodels.ts_sized` and the demo-model trainer
``tools/train_demo_model.py`` (outside the package, like this folder). The layout is nnU-Net's results layout::

    <root>/<DatasetXXX_Name>/<Trainer>__<Plans>__<configuration>/
        plans.json
        dataset.json
        fold_<f>/checkpoint_final.pth

Conventions (all taken from nnU-Net v2's own code, see the comments at each function):

* Arrays are in nnU-Net/SimpleITK axis order (z, y, x) = (k, j, i) of the NIfTI voxel grid; with
  ``transpose_forward == [0, 1, 2]`` the plans' ``patch_size`` and ``spacing`` are in that same order.
* Spacing is in millimetres; label values are the integers of ``dataset.json["labels"]`` (0 = background).
* ``plans.json`` describes the network in the >= 2.4 ``architecture`` form (``network_class_name``,
  ``arch_kwargs``, ``_kw_requires_import``); the predictor builds it through
  ``trainer_class.build_network_architecture(..., enable_deep_supervision=False)``, i.e.
  ``get_network_from_plans``: ``pydoc.locate`` on the class name and on every ``_kw_requires_import`` entry,
  then ``cls(input_channels=..., num_classes=..., deep_supervision=False, **arch_kwargs)``.
* ``checkpoint_final.pth`` holds the keys of ``nnUNetTrainer.save_checkpoint``; the predictor reads only
  ``network_weights``, ``trainer_name``, ``init_args["configuration"]`` and
  ``inference_allowed_mirroring_axes``.

Heavy packages (torch, dynamic_network_architectures, nnunetv2) are imported inside the functions that use
them, through :func:`edgeseg._deps.require`.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg._deps import require

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

log = logging.getLogger(__name__)

PLANS_NAME = "nnUNetPlans"
CONFIGURATION = "3d_fullres"
PLAIN_CONV_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
#: the arch_kwargs entries nnU-Net stores as dotted names and resolves with pydoc.locate
KW_REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def trainer_folder_name(trainer: str, plans_name: str = PLANS_NAME, configuration: str = CONFIGURATION) -> str:
    """``<trainer>__<plans>__<configuration>``, nnU-Net's results sub-folder name."""
    return f"{trainer}__{plans_name}__{configuration}"


def plain_conv_unet_architecture(
    features_per_stage: Sequence[int],
    strides: Sequence[Sequence[int]],
    kernel_size: int = 3,
    n_conv_per_stage: int = 2,
    n_conv_per_stage_decoder: int = 2,
) -> dict[str, Any]:
    """The ``configurations[c]["architecture"]`` entry for a 3-D PlainConvUNet, as nnU-Net's planner writes it.

    Key order and values follow ``ExperimentPlanner.get_plans_for_configuration`` (nnU-Net >= 2.4):
    InstanceNorm3d (eps 1e-5, affine), LeakyReLU (inplace), conv bias on, no dropout. ``strides`` and the
    kernel sizes are per stage in (z, y, x) order.
    """
    n_stages = len(features_per_stage)
    if len(strides) != n_stages:
        raise ValueError(f"{n_stages} stages but {len(strides)} strides")
    return {
        "network_class_name": PLAIN_CONV_UNET,
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [int(f) for f in features_per_stage],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[kernel_size] * 3 for _ in range(n_stages)],
            "strides": [[int(s) for s in st] for st in strides],
            "n_conv_per_stage": [n_conv_per_stage] * n_stages,
            "n_conv_per_stage_decoder": [n_conv_per_stage_decoder] * (n_stages - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": list(KW_REQUIRES_IMPORT),
    }


def fullres_configuration(
    *,
    patch_size: Sequence[int],
    spacing: Sequence[float],
    median_image_size_in_voxels: Sequence[float],
    batch_size: int,
    architecture: Mapping[str, Any],
    batch_dice: bool,
    plans_name: str = PLANS_NAME,
) -> dict[str, Any]:
    """One ``configurations["3d_fullres"]`` entry, keys in the order nnU-Net's planner writes them.

    ``patch_size`` and ``spacing`` are (z, y, x) after ``transpose_forward``; resampling functions and their
    kwargs are ``ExperimentPlanner.determine_resampling`` / ``determine_segmentation_softmax_export_fn``.
    Normalisation is ZScoreNormalization without the nonzero mask (what the planner picks for an MR channel when
    cropping to nonzero keeps >= 3/4 of the image).
    """
    return {
        "data_identifier": f"{plans_name}_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": int(batch_size),
        "patch_size": [int(p) for p in patch_size],
        "median_image_size_in_voxels": [float(m) for m in median_image_size_in_voxels],
        "spacing": [float(s) for s in spacing],
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": json.loads(json.dumps(architecture)),
        "batch_dice": bool(batch_dice),
    }


def plans_json(
    *,
    dataset_name: str,
    configuration: Mapping[str, Any],
    original_median_spacing: Sequence[float],
    original_median_shape: Sequence[int],
    foreground_intensity_properties: Mapping[str, float],
    plans_name: str = PLANS_NAME,
) -> dict[str, Any]:
    """The whole ``plans.json`` dict with one ``3d_fullres`` configuration (keys as in ``plan_experiment``).

    Axis order is (z, y, x) with ``transpose_forward = transpose_backward = [0, 1, 2]``; the reader/writer is
    SimpleITKIO, so the predictor expects arrays in SimpleITK order. ``foreground_intensity_properties`` has the
    keys mean, median, std, min, max, percentile_99_5, percentile_00_5 (channel "0").
    """
    fg = {k: float(foreground_intensity_properties[k])
          for k in ("mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5")}
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [float(s) for s in original_median_spacing],
        "original_median_shape_after_transp": [int(round(s)) for s in original_median_shape],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: dict(configuration)},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": fg},
    }


def dataset_json(labels: Mapping[int, str], *, channel_name: str = "MRI", num_training: int = 1,
                 file_ending: str = ".nii.gz", name: str | None = None) -> dict[str, Any]:
    """``dataset.json`` as ``nnunetv2.dataset_conversion.generate_dataset_json`` writes it.

    ``labels`` maps value -> name for the foreground (1..N); background 0 is added first. One input channel "0".
    """
    if 0 in labels:
        raise ValueError("labels must not contain 0 (background is added here)")
    out: dict[str, Any] = {
        "channel_names": {"0": channel_name},
        "labels": {"background": 0, **{str(labels[v]): int(v) for v in sorted(labels)}},
        "numTraining": int(num_training),
        "file_ending": file_ending,
    }
    if name is not None:
        out["name"] = name
    return out


def num_segmentation_heads(dataset: Mapping[str, Any]) -> int:
    """Network outputs for a label (not region) dataset: max label value + 1, as nnU-Net's LabelManager."""
    return max(int(v) for v in dataset["labels"].values()) + 1


def build_network(architecture: Mapping[str, Any], num_input_channels: int, num_outputs: int,
                  *, deep_supervision: bool = False, initialize: bool = True) -> torch.nn.Module:
    """Instantiate the architecture entry of the plans the way ``get_network_from_plans`` does.

    Input of the network: (batch, channels, z, y, x) float32; output (batch, num_outputs, z, y, x) logits (a
    list, full resolution first, when ``deep_supervision``). The state dict keys do not depend on
    ``deep_supervision`` for PlainConvUNet (its decoder always holds every ``seg_layers`` entry).
    """
    from edgeseg.export.network import network_from_architecture

    net = network_from_architecture(dict(architecture), num_input_channels, num_outputs, deep_supervision)
    if initialize and hasattr(net, "initialize"):
        net.apply(net.initialize)
    return net


def empty_training_log() -> dict[str, list[Any]]:
    """``nnUNetLogger.get_checkpoint()`` of a logger that logged nothing (nnU-Net's LocalLogger keys)."""
    keys = ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses", "val_losses", "lrs",
            "epoch_start_timestamps", "epoch_end_timestamps")
    return {k: [] for k in keys}


def checkpoint_dict(
    network_weights: Mapping[str, torch.Tensor],
    *,
    plans: Mapping[str, Any],
    dataset: Mapping[str, Any],
    trainer_name: str,
    current_epoch: int,
    fold: int = 0,
    configuration: str = CONFIGURATION,
    inference_allowed_mirroring_axes: tuple[int, ...] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    training_log: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict ``nnUNetTrainer.save_checkpoint`` pickles, keys in its order.

    ``init_args`` mirrors ``nnUNetTrainer.my_init_kwargs`` (plans, configuration, fold, dataset_json, device),
    device being a ``torch.device`` as nnU-Net stores it. ``inference_allowed_mirroring_axes`` is None for the
    *NoMirroring trainers (they set it to None in ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``).
    Everything in it loads with ``torch.load(weights_only=True)``.
    """
    torch = require("torch", "Writing an nnU-Net checkpoint")
    from collections import OrderedDict

    # no clone(): PlainConvUNet's state dict aliases tensors (decoder.encoder.* = encoder.*, ...all_modules.0.* =
    # ...conv.*); torch.save stores a shared storage once, as in nnU-Net's own checkpoints (~3x smaller)
    weights = OrderedDict((k, v.detach()) for k, v in network_weights.items())
    return {
        "network_weights": weights,
        "optimizer_state": None if optimizer_state is None else dict(optimizer_state),
        "grad_scaler_state": None,
        "logging": dict(training_log) if training_log is not None else empty_training_log(),
        "_best_ema": None,
        "current_epoch": int(current_epoch),
        "init_args": {
            "plans": json.loads(json.dumps(plans)),
            "configuration": configuration,
            "fold": int(fold),
            "dataset_json": json.loads(json.dumps(dataset)),
            "device": torch.device("cpu"),
        },
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": (None if inference_allowed_mirroring_axes is None
                                             else tuple(int(a) for a in inference_allowed_mirroring_axes)),
    }


def _write_json(obj: Mapping[str, Any], path: Path) -> None:
    # nnU-Net: save_json(..., indent=4, sort_keys=False) for plans and dataset.json
    path.write_text(json.dumps(obj, indent=4, sort_keys=False) + "\n", encoding="utf-8")


def write_model_folder(root: Path, *, trainer_name: str, plans: Mapping[str, Any], dataset: Mapping[str, Any],
                       checkpoint: Mapping[str, Any], fold: int = 0,
                       checkpoint_name: str = "checkpoint_final.pth") -> Path:
    """Write ``root/<dataset_name>/<trainer>__<plans>__3d_fullres/{plans.json,dataset.json,fold_N/...}``.

    Returns the trainer folder (the one nnU-Net's predictor is pointed at).
    """
    torch = require("torch", "Writing an nnU-Net checkpoint")
    folder = Path(root) / str(plans["dataset_name"]) / trainer_folder_name(trainer_name, str(plans["plans_name"]))
    (folder / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    _write_json(plans, folder / "plans.json")
    _write_json(dataset, folder / "dataset.json")
    torch.save(dict(checkpoint), folder / f"fold_{fold}" / checkpoint_name)
    log.info("wrote nnU-Net model folder %s", folder)
    return folder


def make_release_zip(model_folder: Path, zip_path: Path) -> Path:
    """Zip a trainer folder the way TotalSegmentator's release zips are laid out.

    The archive holds ``<DatasetXXX_Name>/<Trainer>__<Plans>__<configuration>/...`` (TotalSegmentator extracts
    its zips into ``nnunet/results``), entries sorted, with fixed timestamps so the zip is reproducible.
    """
    model_folder = Path(model_folder)
    top = model_folder.parent
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in model_folder.rglob("*") if p.is_file()):
            arcname = path.relative_to(top.parent).as_posix()
            info = zipfile.ZipInfo(arcname, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with path.open("rb") as src, zf.open(info, "w") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    log.info("wrote release zip %s", zip_path)
    return zip_path


#: where nnunetv2 (2.5 .. 2.8) defines the trainers our generators name; used only when nnunetv2's own lookup fails
KNOWN_TRAINER_MODULES = {
    "nnUNetTrainer": "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
    "nnUNetTrainerNoMirroring":
        "nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring",
    "nnUNetTrainer_2000epochs_NoMirroring":
        "nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring",
}


def find_trainer_class(trainer_name: str) -> type:
    """The nnunetv2 trainer class called ``trainer_name``.

    First nnunetv2's own ``recursive_find_trainer_class_by_name``. That one imports every trainer module in
    alphabetical order until it finds the name, so one broken optional dependency stops it (here: the Primus
    trainers import timm -> torchvision, and a CUDA torchvision wheel beside CPU torch raises
    ``RuntimeError: operator torchvision::nms does not exist`` before ``variants/`` is reached). In that case the
    class is imported from the module that defines it (:data:`KNOWN_TRAINER_MODULES`): the same class object.
    """
    import importlib

    find_objects = require("nnunetv2.utilities.find_objects", "Finding nnU-Net trainer classes")
    try:
        cls = find_objects.recursive_find_trainer_class_by_name(trainer_name)
        if cls is not None:
            return cls
    except Exception as err:  # noqa: BLE001 - any import failure in an unrelated trainer module
        if trainer_name not in KNOWN_TRAINER_MODULES:
            raise
        log.warning("nnunetv2's trainer lookup failed (%s: %s); importing %s from %s directly",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "", trainer_name,
                    KNOWN_TRAINER_MODULES[trainer_name])
    if trainer_name not in KNOWN_TRAINER_MODULES:
        raise LookupError(f"nnunetv2 has no trainer class {trainer_name!r}")
    return getattr(importlib.import_module(KNOWN_TRAINER_MODULES[trainer_name]), trainer_name)


def nnunet_predictor(model_folder: Path, *, tile_step_size: float = 0.5, use_gaussian: bool = True,
                     use_mirroring: bool = False, checkpoint_name: str = "checkpoint_final.pth",
                     folds: Sequence[int | str] = (0,)) -> Any:
    """nnU-Net's own ``nnUNetPredictor`` (CPU) initialised with ``initialize_from_trained_model_folder``.

    The only substitution: the predictor's trainer lookup goes through :func:`find_trainer_class` (nnunetv2's
    lookup first). nnU-Net prints to stdout; that output is captured and logged at DEBUG level.
    """
    torch = require("torch", "Running nnU-Net's predictor")
    pred_mod = require("nnunetv2.inference.predict_from_raw_data", "Running nnU-Net's reference predictor")
    buf = io.StringIO()
    original_lookup = pred_mod.recursive_find_trainer_class_by_name
    setattr(pred_mod, "recursive_find_trainer_class_by_name", find_trainer_class)
    try:
        with contextlib.redirect_stdout(buf):
            predictor = pred_mod.nnUNetPredictor(
                tile_step_size=tile_step_size, use_gaussian=use_gaussian, use_mirroring=use_mirroring,
                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                verbose_preprocessing=False, allow_tqdm=False,
            )
            predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                           checkpoint_name=checkpoint_name)
    finally:
        setattr(pred_mod, "recursive_find_trainer_class_by_name", original_lookup)
    if buf.getvalue().strip():
        log.debug("nnU-Net: %s", buf.getvalue().strip())
    return predictor


def predict_with_nnunet(predictor: Any, image_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Segment one single-channel volume with ``predictor.predict_single_npy_array``.

    ``image_zyx``: (z, y, x) array in the model's expected orientation; ``spacing_zyx`` in mm, same order.
    Returns the label map (z, y, x), same shape as the input, integer label values.
    """
    import numpy as np

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        seg = predictor.predict_single_npy_array(np.asarray(image_zyx, dtype=np.float32)[None],
                                                 {"spacing": [float(s) for s in spacing_zyx]})
    if buf.getvalue().strip():
        log.debug("nnU-Net: %s", buf.getvalue().strip())
    return np.asarray(seg)
