"""Tiny nnU-Net v2 model folders (real format, random weights) for fast export tests."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def make_tiny_model(root: Path, dataset_name: str, labels: dict[int, str], *, seed: int = 0,
                    folds: Sequence[int] = (0,), spacing=(3.0, 3.0, 3.0), patch=(16, 32, 32),
                    trainer: str = "nnUNetTrainerNoMirroring") -> Path:
    """Write <root>/<dataset_name>/<trainer>__nnUNetPlans__3d_fullres with a 3-stage PlainConvUNet."""
    import torch

    from helpers.testmodels import _nnunet_folder as nf

    arch = nf.plain_conv_unet_architecture((8, 16, 32), ((1, 1, 1), (1, 2, 2), (2, 2, 2)))
    cfg = nf.fullres_configuration(patch_size=patch, spacing=spacing, median_image_size_in_voxels=(20, 91, 117),
                                   batch_size=2, architecture=arch, batch_dice=False)
    fg = {"mean": 300.0, "median": 280.0, "std": 120.0, "min": 0.0, "max": 1200.0, "percentile_99_5": 900.0,
          "percentile_00_5": 10.0}
    plans = nf.plans_json(dataset_name=dataset_name, configuration=cfg, original_median_spacing=spacing,
                          original_median_shape=(20, 91, 117), foreground_intensity_properties=fg)
    dataset = nf.dataset_json(labels)
    folder = None
    for f in folds:
        torch.manual_seed(seed + f)
        net = nf.build_network(arch, 1, max(labels) + 1)
        ckpt = nf.checkpoint_dict(net.state_dict(), plans=plans, dataset=dataset, trainer_name=trainer,
                                  current_epoch=1, fold=f)
        folder = nf.write_model_folder(root, trainer_name=trainer, plans=plans, dataset=dataset, checkpoint=ckpt,
                                       fold=f)
    assert folder is not None
    return folder
