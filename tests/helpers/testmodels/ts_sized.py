"""Generate TotalSegmentator-MRI-sized nnU-Net v2 model folders with random weights (no training).

These stand in for the real TotalSegmentator MRI weights where a test or a benchmark needs the real network
size and folder layout but not meaningful outputs (export, INT8 calibration mechanics, speed, memory). Their
outputs are noise. They are NOT committed: generate them into a temporary or work folder when needed
(about 125 MB per model).

Each model is a ``dynamic_network_architectures`` PlainConvUNet as nnU-Net plans it for TotalSegmentator MRI:
6 stages, features (32, 64, 128, 256, 320, 320), strides (1,1,1) then 5 x (2,2,2), 3x3x3 kernels, 2 convs per
stage (encoder and decoder), InstanceNorm3d (eps 1e-5, affine), LeakyReLU, patch (128, 128, 128). Axis order
(z, y, x) = SimpleITK order of the RAS-canonical volume, as TotalSegmentator feeds nnU-Net.

============  ==============================================  ===========  =======================================
which         dataset                                          spacing mm   outputs
============  ==============================================  ===========  =======================================
``"850"``     Dataset850_TotalSegMRI_part1_organs_1088subj     1.5          30 = bg + 29 (total_mr_parts.json part 1)
``"851"``     Dataset851_TotalSegMRI_part2_muscles_1088subj    1.5          22 = bg + 21 (total_mr_parts.json part 2)
``"852"``     Dataset852_TotalSegMRI_total_3mm_1088subj        3.0          51 = bg + 50 (total_mr_labels.json)
============  ==============================================  ===========  =======================================

Trainer folder: ``nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres`` (TotalSegmentator's name; the
class exists in nnunetv2 under training/nnUNetTrainer/variants/training_length/), checkpoint ``trainer_name`` the
same string, ``current_epoch`` 2000, ``inference_allowed_mirroring_axes`` None (what that trainer saves).
Foreground intensity properties are plausible MRI constants, not measured.

Run: ``python tests/helpers/testmodels/ts_sized.py --out /tmp/ts_models [--which 851] [--zip] [--check]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# tests/ holds the helpers package; on sys.path already in the tests and benchmarks, not when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from helpers.testmodels import _nnunet_folder as nf  # noqa: E402

from edgeseg._deps import require  # noqa: E402
from edgeseg.demo import MRI_FILE  # noqa: E402

log = logging.getLogger(__name__)

TRAINER_NAME = "nnUNetTrainer_2000epochs_NoMirroring"
FEATURES = (32, 64, 128, 256, 320, 320)
STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
PATCH_SIZE_ZYX = (128, 128, 128)
NUM_EPOCHS = 2000

#: plausible foreground intensity statistics of an MR channel (nnU-Net's fingerprint keys); not measured
FOREGROUND_INTENSITY_PROPERTIES: dict[str, float] = {
    "mean": 412.5, "median": 361.0, "std": 268.3, "min": 0.0, "max": 3895.0,
    "percentile_99_5": 1524.0, "percentile_00_5": 12.0,
}

_REPO_ROOT = Path(__file__).resolve().parents[3]
#: total_mr_labels.json (the 50 total_mr labels): the package's copy beside the demo MRI
DEFAULT_LABELS_JSON = MRI_FILE.parent / "total_mr_labels.json"
#: total_mr_parts.json (the split of the 1.5 mm parts): the test fixture committed in a source checkout
DEFAULT_PARTS_JSON = _REPO_ROOT / "tests" / "fixtures" / "total_mr_example" / "total_mr_parts.json"


@dataclass(frozen=True)
class ModelSpec:
    """One TotalSegmentator-MRI-sized model: dataset name, spacing (z, y, x) mm, plausible sizes, label source."""

    key: str
    dataset_name: str
    spacing: tuple[float, float, float]
    median_shape: tuple[int, int, int]
    #: "parts:<dataset name>" -> that entry of total_mr_parts.json; "total" -> total_mr_labels.json
    labels_from: str


SPECS: dict[str, ModelSpec] = {
    "850": ModelSpec("850", "Dataset850_TotalSegMRI_part1_organs_1088subj", (1.5, 1.5, 1.5), (224, 240, 240),
                     "parts:Dataset850_TotalSegMRI_part1_organs_1088subj"),
    "851": ModelSpec("851", "Dataset851_TotalSegMRI_part2_muscles_1088subj", (1.5, 1.5, 1.5), (224, 240, 240),
                     "parts:Dataset851_TotalSegMRI_part2_muscles_1088subj"),
    "852": ModelSpec("852", "Dataset852_TotalSegMRI_total_3mm_1088subj", (3.0, 3.0, 3.0), (112, 120, 120),
                     "total"),
}


def label_names(spec: ModelSpec, data_dir: Path | None = None) -> dict[int, str]:
    """{value: name} of the model's foreground labels, read from total_mr_labels.json or total_mr_parts.json in
    ``data_dir`` (default: :data:`DEFAULT_LABELS_JSON` and :data:`DEFAULT_PARTS_JSON`, committed in the repository)."""
    if spec.labels_from == "total":
        path = Path(data_dir) / "total_mr_labels.json" if data_dir is not None else DEFAULT_LABELS_JSON
        raw = json.loads(path.read_text(encoding="utf-8"))
    else:
        path = Path(data_dir) / "total_mr_parts.json" if data_dir is not None else DEFAULT_PARTS_JSON
        raw = json.loads(path.read_text(encoding="utf-8"))[spec.labels_from.split(":", 1)[1]]
    return {int(k): str(v) for k, v in sorted(raw.items(), key=lambda kv: int(kv[0]))}


def model_plans(which: str, data_dir: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plans.json, dataset.json) dicts of one model, without building any weights."""
    try:
        spec = SPECS[str(which)]
    except KeyError as err:
        raise ValueError(f"unknown model {which!r}; choose from {', '.join(SPECS)}") from err
    architecture = nf.plain_conv_unet_architecture(FEATURES, STRIDES)
    configuration = nf.fullres_configuration(
        patch_size=PATCH_SIZE_ZYX, spacing=spec.spacing, median_image_size_in_voxels=spec.median_shape,
        batch_size=2, architecture=architecture, batch_dice=True)
    plans = nf.plans_json(dataset_name=spec.dataset_name, configuration=configuration,
                          original_median_spacing=spec.spacing, original_median_shape=spec.median_shape,
                          foreground_intensity_properties=FOREGROUND_INTENSITY_PROPERTIES)
    dataset = nf.dataset_json(label_names(spec, data_dir), channel_name="MRI", num_training=1088,
                              file_ending=".nii.gz")
    return plans, dataset


def generate(out_dir: Path, which: Sequence[str] = ("850", "851", "852"), seed: int = 0,
             data_dir: Path | None = None) -> dict[str, Path]:
    """Write the requested models under ``out_dir`` with He-initialised random weights; return {key: folder}.

    Folder: ``out_dir/<dataset name>/nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres``. Weights
    are a deterministic function of ``seed`` and the dataset id (torch.manual_seed(seed * 1000 + id)).
    """
    torch = require("torch", "Generating TotalSegmentator-sized test models")
    folders: dict[str, Path] = {}
    for key in which:
        t0 = time.perf_counter()
        plans, dataset = model_plans(key, data_dir)
        arch = plans["configurations"][nf.CONFIGURATION]["architecture"]
        torch.manual_seed(int(seed) * 1000 + int(key))
        net = nf.build_network(arch, 1, nf.num_segmentation_heads(dataset), deep_supervision=False)
        ckpt = nf.checkpoint_dict(net.state_dict(), plans=plans, dataset=dataset, trainer_name=TRAINER_NAME,
                                  current_epoch=NUM_EPOCHS, inference_allowed_mirroring_axes=None)
        folders[str(key)] = nf.write_model_folder(Path(out_dir), trainer_name=TRAINER_NAME, plans=plans,
                                                  dataset=dataset, checkpoint=ckpt)
        log.info("%s: %d outputs, %.1f M parameters, %.1f s", plans["dataset_name"],
                 nf.num_segmentation_heads(dataset), sum(p.numel() for p in net.parameters()) / 1e6,
                 time.perf_counter() - t0)
    return folders


def make_release_zip(model_folder: Path, zip_path: Path) -> Path:
    """Zip a generated trainer folder like a TotalSegmentator release zip.

    The archive's top folder is the dataset folder: ``Dataset850_.../nnUNetTrainer_...__nnUNetPlans__3d_fullres/
    {plans.json, dataset.json, fold_0/checkpoint_final.pth}``.
    """
    return nf.make_release_zip(model_folder, zip_path)


def smoke_predict(model_folder: Path, seed: int = 0) -> np.ndarray:
    """Load ``model_folder`` with nnU-Net's own predictor and segment one random 128^3 patch (CPU).

    Input: uniform noise in [1, 2) (nonzero, so nnU-Net's crop keeps it whole), (z, y, x) = the patch size, at
    the plans' spacing. Returns the (128, 128, 128) label map.
    """
    plans = json.loads((Path(model_folder) / "plans.json").read_text(encoding="utf-8"))
    spacing = plans["configurations"][nf.CONFIGURATION]["spacing"]
    image = np.random.default_rng(seed).uniform(1.0, 2.0, PATCH_SIZE_ZYX).astype(np.float32)
    predictor = nf.nnunet_predictor(model_folder, tile_step_size=0.5, use_gaussian=True, use_mirroring=False)
    return nf.predict_with_nnunet(predictor, image, spacing)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the TotalSegmentator-sized random-weight folders (and optionally zips)."""
    parser = argparse.ArgumentParser(prog="python tests/helpers/testmodels/ts_sized.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results root to write into")
    parser.add_argument("--which", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path,
                        help="folder with total_mr_labels.json and total_mr_parts.json (default: "
                             f"{DEFAULT_LABELS_JSON} and {DEFAULT_PARTS_JSON})")
    parser.add_argument("--zip", action="store_true", help="also write <out>/<dataset name>.zip release zips")
    parser.add_argument("--check", action="store_true",
                        help="load each folder with nnU-Net's predictor and segment one random 128^3 patch")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    folders = generate(args.out, args.which, args.seed, args.data_dir)
    for key, folder in folders.items():
        print(folder)
        if args.zip:
            print(make_release_zip(folder, Path(args.out) / f"{folder.parent.name}.zip"))
        if args.check:
            t0 = time.perf_counter()
            seg = smoke_predict(folder, seed=args.seed)
            print(f"{key}: nnU-Net predictor OK, output {seg.shape}, labels {np.unique(seg).size} distinct, "
                  f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
