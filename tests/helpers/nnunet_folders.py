"""Checks of a generated nnU-Net v2 trained-model folder (files, plans/dataset content, checkpoint keys), shared by
the tests of the test-model generator (``helpers.testmodels.ts_sized``) and of the demo-model trainer
(``tools/train_demo_model.py``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHECKPOINT_KEYS = ["network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                   "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"]
ARCH_KWARGS_KEYS = ["n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
                    "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
                    "dropout_op_kwargs", "nonlin", "nonlin_kwargs"]


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def check_model_folder(folder: Path, *, trainer: str, num_outputs: int, spacing: list[float]) -> dict[str, Any]:
    """Files, plans/dataset content and checkpoint keys of one generated folder; returns the checkpoint."""
    import torch

    from helpers.testmodels import _nnunet_folder as nf

    assert folder.name == f"{trainer}__nnUNetPlans__3d_fullres"
    plans = load_json(folder / "plans.json")
    dataset = load_json(folder / "dataset.json")
    assert plans["dataset_name"] == folder.parent.name
    assert plans["transpose_forward"] == [0, 1, 2] and plans["image_reader_writer"] == "SimpleITKIO"
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["spacing"] == spacing
    assert cfg["normalization_schemes"] == ["ZScoreNormalization"] and cfg["use_mask_for_norm"] == [False]
    arch = cfg["architecture"]
    assert arch["network_class_name"] == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    assert list(arch["arch_kwargs"]) == ARCH_KWARGS_KEYS
    assert arch["_kw_requires_import"] == ["conv_op", "norm_op", "dropout_op", "nonlin"]
    assert set(plans["foreground_intensity_properties_per_channel"]["0"]) == {
        "mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5"}
    assert dataset["labels"]["background"] == 0
    assert len(dataset["labels"]) == num_outputs == nf.num_segmentation_heads(dataset)
    assert dataset["channel_names"] == {"0": "MRI"} and dataset["file_ending"] == ".nii.gz"

    # loads without unpickling arbitrary objects, as edgeseg's exporter loads it
    ckpt: dict[str, Any] = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                                      weights_only=True)
    assert list(ckpt) == CHECKPOINT_KEYS
    assert ckpt["trainer_name"] == trainer
    assert ckpt["init_args"]["configuration"] == "3d_fullres" and ckpt["init_args"]["fold"] == 0
    assert ckpt["init_args"]["plans"] == plans and ckpt["init_args"]["dataset_json"] == dataset
    assert ckpt["inference_allowed_mirroring_axes"] is None  # what the *NoMirroring trainers save
    net = nf.build_network(arch, 1, num_outputs, deep_supervision=False, initialize=False)
    net.load_state_dict(ckpt["network_weights"], strict=True)
    assert net.decoder.seg_layers[-1].out_channels == num_outputs
    return ckpt
