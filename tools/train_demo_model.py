"""Train a small real nnU-Net v2 model on the demo MRI: the committed demo and test model (development tool).

Demo and test model trained on ONE case; not a clinical model. It exists so that every stage of edgeseg (export
to ONNX/OpenVINO, INT8, runtime, writers) can be exercised end to end, on a laptop, against a network whose
outputs mean something. It lives in ``tools/``, outside the installed package: the product never trains.

Input contract of the trained model (the same as TotalSegmentator's):

* orientation: the NIfTI volume reoriented to the closest canonical RAS+ orientation
  (``nibabel.as_closest_canonical``), then put in nnU-Net/SimpleITK axis order
  ``array = data.transpose(2, 1, 0)``: axes (k, j, i) = (z, y, x), i.e. S-I slowest, R-L fastest;
* spacing (3.0, 3.0, 3.0) mm in (z, y, x) order, one channel "MRI", any contrast (z-scored per image);
* outputs: 51 channels = background (0) + the 50 ``total_mr`` labels, numbered as in
  ``total_mr_labels.json`` (1 spleen ... 50 brain); only 23 of them occur in the training case.

What this script writes (``--out`` defaults to ``tests/fixtures/models``)::

    <out>/Dataset900_EdgesegDemoMR/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres/
        plans.json, dataset.json, fold_0/checkpoint_final.pth, TRAINING_RECORD.md

in the exact format nnU-Net v2 writes (see ``tests/helpers/testmodels/_nnunet_folder.py``), then segments the
training case with nnU-Net's own ``nnUNetPredictor`` and records per-class Dice.

Network: ``dynamic_network_architectures`` PlainConvUNet, 4 stages, features (16, 32, 64, 128), strides
(1,1,1), (1,2,2), (2,2,2), (2,2,2), 3x3x3 kernels, 2 convs per stage, InstanceNorm3d, LeakyReLU, patch
(16, 80, 96) (z, y, x).

Preprocessing at training time is nnU-Net's inference preprocessing: crop to the filled nonzero mask, z-score
over the whole cropped image (ZScoreNormalization, ``use_mask_for_norm`` False), no resampling (already 3 mm).
Intensity augmentation is applied to the raw image *before* z-scoring (gamma, inversion ``max + min - x``,
contrast with range clipping, multiplicative bias field, Gaussian blur, additive Gaussian noise); a global
brightness/contrast change alone would be undone by the z-scoring, so a light scale/shift jitter is also applied
after it (as nnU-Net's own brightness/contrast transforms are). Spatial augmentation: small scaling and rotation
in the axial (y, x) plane. No mirroring: left/right labels must stay where they are (NoMirroring trainer).

Data (all committed, nothing outside the clone is read): the image ``edgeseg/demo/mri/example_mr_sm.nii.gz`` and
its label names ``edgeseg/demo/mri/total_mr_labels.json`` (packaged), its TotalSegmentator ``total_mr`` labels
``tests/fixtures/total_mr_example/example_seg_mr.nii.gz`` (a test fixture).

Run: ``python tools/train_demo_model.py`` from the repository root, with the test extra installed (about 16 minutes
on 2 CPU cores; see the TRAINING_RECORD.md it writes).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from scipy import ndimage

# the nnU-Net folder writer is a test helper (tests/helpers/testmodels/, not in the installed package)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.testmodels import _nnunet_folder as nf  # noqa: E402

from edgeseg._deps import require  # noqa: E402
from edgeseg.export.metrics import dice_per_class  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

log = logging.getLogger(__name__)

DATASET_NAME = "Dataset900_EdgesegDemoMR"
#: exists in nnunetv2 (training/nnUNetTrainer/variants/data_augmentation/nnUNetTrainerNoMirroring.py)
TRAINER_NAME = "nnUNetTrainerNoMirroring"
SPACING_ZYX: tuple[float, float, float] = (3.0, 3.0, 3.0)
PATCH_SIZE_ZYX: tuple[int, int, int] = (16, 80, 96)
FEATURES = (16, 32, 64, 128)
STRIDES = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2))
NUM_LABELS = 50  # total_mr labels 1..50; the network has NUM_LABELS + 1 outputs
ITERATIONS_PER_EPOCH = 250  # nnU-Net's default, only used to fill the checkpoint's current_epoch

_REPO_ROOT = Path(__file__).resolve().parents[1]
#: the demo MRI and its label names, as the package ships them
DEFAULT_IMAGE = _REPO_ROOT / "edgeseg" / "demo" / "mri" / "example_mr_sm.nii.gz"
DEFAULT_LABELS = _REPO_ROOT / "edgeseg" / "demo" / "mri" / "total_mr_labels.json"
#: TotalSegmentator's total_mr segmentation of the demo MRI (a committed test fixture)
DEFAULT_SEG = _REPO_ROOT / "tests" / "fixtures" / "total_mr_example" / "example_seg_mr.nii.gz"
DEFAULT_OUT = _REPO_ROOT / "tests" / "fixtures" / "models"
#: how the record names this program
COMMAND = "python tools/train_demo_model.py"


@dataclass(frozen=True)
class Case:
    """One training case in nnU-Net order.

    ``image``: float32 (z, y, x) raw intensities of the RAS-canonical volume (``data.transpose(2, 1, 0)``);
    ``seg``: uint8 (z, y, x) total_mr label values 0..50 on the same grid; ``spacing``: (z, y, x) mm.
    """

    image: np.ndarray
    seg: np.ndarray
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class TrainResult:
    """Trained weights and what happened while training."""

    state_dict: dict[str, Any]
    iterations: int
    wall_time_s: float
    losses: list[float]
    bf16: bool = False
    #: os.getloadavg() when training ended: wall times on a shared machine depend on it
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)


def load_case(image_path: Path, seg_path: Path) -> Case:
    """Read image and labels, reorient both to closest canonical RAS+, return them in (z, y, x) order."""
    img = nib.as_closest_canonical(nib.load(str(image_path)))
    seg = nib.as_closest_canonical(nib.load(str(seg_path)))
    if img.shape != seg.shape or not np.allclose(img.affine, seg.affine, atol=1e-3):
        raise ValueError(f"{image_path} and {seg_path} are not on the same voxel grid")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    image_zyx = np.ascontiguousarray(np.asanyarray(img.dataobj).astype(np.float32).transpose(2, 1, 0))
    seg_zyx = np.ascontiguousarray(np.rint(np.asanyarray(seg.dataobj)).astype(np.uint8).transpose(2, 1, 0))
    spacing_zyx = (zooms[2], zooms[1], zooms[0])
    log.info("case %s: shape (z,y,x) %s, spacing %s mm, labels present %s", image_path.name, image_zyx.shape,
             spacing_zyx, np.unique(seg_zyx[seg_zyx > 0]).tolist())
    return Case(image=image_zyx, seg=seg_zyx, spacing=spacing_zyx)


def load_label_names(labels_json: Path) -> dict[int, str]:
    """``total_mr_labels.json`` ({"1": "spleen", ...}) as {value: name}."""
    raw = json.loads(Path(labels_json).read_text(encoding="utf-8"))
    return {int(k): str(v) for k, v in sorted(raw.items(), key=lambda kv: int(kv[0]))}


def nonzero_bbox(image: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of the hole-filled nonzero mask, as nnU-Net's ``crop_to_nonzero`` computes it."""
    mask = ndimage.binary_fill_holes(image != 0)
    if not mask.any():
        return (slice(0, image.shape[0]), slice(0, image.shape[1]), slice(0, image.shape[2]))
    idx = np.nonzero(mask)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)  # type: ignore[return-value]


def zscore(image: np.ndarray) -> np.ndarray:
    """nnU-Net's ZScoreNormalization without mask: (x - mean) / max(std, 1e-8) over the whole image, float32."""
    image = image.astype(np.float32, copy=True)
    mean = image.mean()
    std = image.std()
    image -= mean
    image /= max(float(std), 1e-8)
    return image


def foreground_intensity_properties(image: np.ndarray, seg: np.ndarray, *, seed: int = 1234,
                                    num_samples: int = 10000) -> dict[str, float]:
    """nnU-Net's fingerprint statistics of the foreground (seg > 0) intensities of one case.

    As ``DatasetFingerprintExtractor``: 10000 foreground voxels drawn with replacement
    (``np.random.RandomState(1234)``), then mean, median, std, min, max, 99.5th and 0.5th percentiles.
    """
    fg = image[seg > 0]
    samples = np.random.RandomState(seed).choice(fg, num_samples, replace=True)
    p005, median, p995 = np.percentile(samples, (0.5, 50.0, 99.5))
    return {"mean": float(np.mean(samples)), "median": float(median), "std": float(np.std(samples)),
            "min": float(np.min(samples)), "max": float(np.max(samples)),
            "percentile_99_5": float(p995), "percentile_00_5": float(p005)}


def make_plans(case: Case, label_names: Mapping[int, str], *, batch_size: int) -> tuple[dict[str, Any],
                                                                                          dict[str, Any]]:
    """plans.json and dataset.json for the demo model (one 3d_fullres configuration, 51 outputs)."""
    bbox = nonzero_bbox(case.image)
    cropped_shape = case.image[bbox].shape
    architecture = nf.plain_conv_unet_architecture(FEATURES, STRIDES)
    configuration = nf.fullres_configuration(
        patch_size=PATCH_SIZE_ZYX, spacing=SPACING_ZYX, median_image_size_in_voxels=cropped_shape,
        batch_size=batch_size, architecture=architecture, batch_dice=False)
    plans = nf.plans_json(
        dataset_name=DATASET_NAME, configuration=configuration, original_median_spacing=case.spacing,
        original_median_shape=cropped_shape,
        foreground_intensity_properties=foreground_intensity_properties(case.image, case.seg))
    dataset = nf.dataset_json(label_names, channel_name="MRI", num_training=1, file_ending=".nii.gz")
    return plans, dataset


# --------------------------------------------------------------------------------------------- augmentation


def augment_intensity(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strong random intensity augmentation of a raw (z, y, x) float32 volume, before z-scoring.

    Each transform fires with its own probability: inversion ``max + min - x`` (0.25), gamma on the min-max
    range (0.4), contrast about the mean clipped to the original range (0.3), smooth multiplicative bias field
    (0.4), Gaussian blur (0.2), additive Gaussian noise (0.3).
    """
    x = raw.astype(np.float32, copy=True)
    lo, hi = float(x.min()), float(x.max())
    span = max(hi - lo, 1e-6)
    if rng.random() < 0.25:
        x = (hi + lo) - x
    if rng.random() < 0.4:
        gamma = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        x = np.power(np.clip((x - lo) / span, 0.0, 1.0), gamma) * span + lo
    if rng.random() < 0.3:
        mean = float(x.mean())
        x = np.clip((x - mean) * rng.uniform(0.6, 1.6) + mean, lo, hi)
    if rng.random() < 0.4:
        x = (x - lo) * _bias_field(x.shape, rng) + lo
    if rng.random() < 0.2:
        x = ndimage.gaussian_filter(x, sigma=float(rng.uniform(0.4, 1.0)))
    if rng.random() < 0.3:
        x = x + rng.normal(0.0, rng.uniform(0.0, 0.1) * float(x.std()), size=x.shape)
    return x.astype(np.float32, copy=False)


def _bias_field(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """exp of a random second-order polynomial over the volume (coordinates in [-1, 1])."""
    z, y, x = np.meshgrid(*(np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape), indexing="ij")
    terms = (z, y, x, z * z, y * y, x * x, z * y, z * x, y * x)
    coeffs = np.concatenate([rng.uniform(-0.35, 0.35, 3), rng.uniform(-0.25, 0.25, 6)])
    log_field = sum(float(c) * t for c, t in zip(coeffs, terms))
    return np.exp(log_field).astype(np.float32)


def _patch_grid(shape: Sequence[int], center: np.ndarray, scale: float, angle: float) -> np.ndarray:
    """grid_sample grid (pz, py, px, 3) in (x, y, z) normalised order, align_corners=True.

    Patch voxel offsets from the patch centre are scaled and rotated in the (y, x) plane, then placed at
    ``center`` (voxel indices, z, y, x) of a volume of ``shape``.
    """
    offs = [np.arange(p, dtype=np.float64) - (p - 1) / 2.0 for p in PATCH_SIZE_ZYX]
    oz, oy, ox = np.meshgrid(*offs, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    zz = center[0] + scale * oz
    yy = center[1] + scale * (c * oy - s * ox)
    xx = center[2] + scale * (s * oy + c * ox)
    norm = [2.0 * v / max(n - 1, 1) - 1.0 for v, n in zip((zz, yy, xx), shape)]
    return np.stack([norm[2], norm[1], norm[0]], axis=-1).astype(np.float32)


class _PatchSampler:
    """Random (z, y, x) patch centres with class-balanced foreground oversampling, as nnU-Net's loader does:
    with probability ``p_fg`` a present class is drawn uniformly, then one of its voxels; otherwise a random
    position. Centres are clipped so that the (unaugmented) patch stays inside the image."""

    def __init__(self, seg: np.ndarray, p_fg: float) -> None:
        self.shape = np.array(seg.shape)
        self.p_fg = p_fg
        self.class_voxels = {int(c): np.argwhere(seg == c) for c in np.unique(seg) if c > 0}
        half = (np.array(PATCH_SIZE_ZYX) - 1) / 2.0
        self.lo = np.minimum(half, (self.shape - 1) / 2.0)
        self.hi = np.maximum(self.shape - 1 - half, (self.shape - 1) / 2.0)

    def center(self, rng: np.random.Generator) -> np.ndarray:
        if self.class_voxels and rng.random() < self.p_fg:
            cls = list(self.class_voxels)[int(rng.integers(len(self.class_voxels)))]
            vox = self.class_voxels[cls]
            c = vox[int(rng.integers(len(vox)))].astype(np.float64)
            c = c + rng.uniform(-8, 8, 3) * np.array([0.25, 1.0, 1.0])  # keep the voxel off the exact centre
        else:
            c = rng.uniform(0, 1, 3) * (self.shape - 1)
        return np.clip(c, self.lo, self.hi)


# --------------------------------------------------------------------------------------------------- training


def _loss(outputs: list[torch.Tensor], target: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """nnU-Net's DC_and_CE loss (CE + batch soft Dice over foreground channels) with deep supervision
    weights 1, 1/2, 1/4, ... (the lowest resolution output gets 0), normalised to sum 1."""
    torch = require("torch", "Training the demo model")
    F = torch.nn.functional
    weights = [1.0 / (2 ** i) for i in range(len(outputs))]
    if len(weights) > 1:
        weights[-1] = 0.0
    total_w = sum(weights)
    loss = outputs[0].new_zeros(())
    for out, w in zip(outputs, weights):
        if w == 0.0:
            continue
        tgt = target
        if out.shape[2:] != target.shape[1:]:
            tgt = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long()
        logp = torch.log_softmax(out, 1)
        ce = F.nll_loss(logp, tgt)
        probs = logp.exp()
        # soft Dice without a one-hot tensor: tp = sum of p[target], |pred| = sum of p, |ref| = voxel counts
        flat_t = tgt.reshape(-1)
        p_at_t = probs.gather(1, tgt[:, None]).reshape(-1)
        tp = probs.new_zeros(num_outputs).index_add(0, flat_t, p_at_t)
        pred_sum = probs.sum((0, 2, 3, 4))
        ref_sum = torch.bincount(flat_t, minlength=num_outputs).to(probs.dtype)
        dice = ((2 * tp + 1e-5) / torch.clamp(pred_sum + ref_sum + 1e-5, min=1e-8))[1:]  # batch dice, fg only
        loss = loss + (w / total_w) * (ce + (1.0 - dice.mean()))
    return loss


def cpu_has_bf16() -> bool:
    """True when the CPU advertises native bfloat16 (AVX512_BF16 or AMX_BF16) in /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def train(case: Case, architecture: Mapping[str, Any], *, iterations: int, seed: int, batch_size: int = 2,
          lr: float = 3e-3, log_every: int = 50, threads: int = 2, bf16: bool = False) -> TrainResult:
    """Train the PlainConvUNet on random 16x80x96 patches of ``case`` (deterministic for a given seed).

    ``bf16``: run the forward pass under ``torch.autocast("cpu", torch.bfloat16)`` (mixed precision, like nnU-Net's
    fp16 autocast on GPUs; weights, optimizer and loss stay float32). About 1.7x faster on CPUs with native bf16.
    """
    torch = require("torch", "Training the demo model")
    F = torch.nn.functional
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception as err:  # noqa: BLE001 - best effort
        log.warning("deterministic algorithms unavailable: %s", err)
    rng = np.random.default_rng(seed)

    bbox = nonzero_bbox(case.image)
    raw = case.image[bbox]
    seg = case.seg[bbox].astype(np.int64)
    shape = raw.shape
    sampler = _PatchSampler(seg, p_fg=0.5)
    seg_t = torch.from_numpy(seg.astype(np.float32))[None, None].expand(batch_size, 1, *shape)

    num_outputs = NUM_LABELS + 1
    net = nf.build_network(architecture, 1, num_outputs, deep_supervision=True)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=3e-5)
    warmup = 20

    def lr_at(it: int) -> float:
        if it < warmup:
            return lr * (it + 1) / warmup
        return lr * (1.0 - (it - warmup) / max(iterations - warmup, 1)) ** 0.9

    losses: list[float] = []
    t0 = time.perf_counter()
    for it in range(iterations):
        vols, grids = [], []
        for _ in range(batch_size):
            vol = zscore(augment_intensity(raw, rng))
            if rng.random() < 0.2:  # light post-normalisation brightness/contrast jitter
                vol = vol * float(rng.uniform(0.85, 1.15)) + float(rng.uniform(-0.15, 0.15))
            vols.append(vol)
            spatial = rng.random() < 0.35
            scale = float(rng.uniform(0.85, 1.15)) if spatial else 1.0
            angle = float(rng.uniform(-np.pi / 12, np.pi / 12)) if spatial else 0.0
            grids.append(_patch_grid(shape, sampler.center(rng), scale, angle))
        vol_t = torch.from_numpy(np.stack(vols))[:, None]
        grid_t = torch.from_numpy(np.stack(grids))
        x = F.grid_sample(vol_t, grid_t, mode="bilinear", padding_mode="zeros", align_corners=True)
        y = F.grid_sample(seg_t, grid_t, mode="nearest", padding_mode="zeros", align_corners=True)[:, 0].long()

        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        loss = _loss([o.float() for o in outs], y, num_outputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (it + 1) % log_every == 0 or it + 1 == iterations:
            recent = losses[-log_every:]
            log.info("iteration %d/%d  loss %.4f  lr %.2e  %.0f s", it + 1, iterations,
                     sum(recent) / len(recent), lr_at(it), time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    net.eval()
    state = dict(net.state_dict())  # keeps nnU-Net's aliased keys sharing storage
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return TrainResult(state_dict=state, iterations=iterations, wall_time_s=wall, losses=losses, bf16=bf16,
                       load_average=(float(load[0]), float(load[1]), float(load[2])))


# ------------------------------------------------------------------------------------------------- evaluation


def evaluate(model_folder: Path, case: Case) -> dict[str, dict[int, float]]:
    """Segment the training case with nnU-Net's own predictor (CPU, step 0.5, Gaussian, no mirroring).

    Returns per-class Dice for the original contrast and two contrast variants (inverted ``max + min - x``;
    gamma 2 on the min-max range), each over the classes present in the reference or the prediction.
    """
    predictor = nf.nnunet_predictor(model_folder, tile_step_size=0.5, use_gaussian=True, use_mirroring=False)
    lo, hi = float(case.image.min()), float(case.image.max())
    variants = {
        "original": case.image,
        "inverted": (hi + lo) - case.image,
        "gamma2": ((case.image - lo) / (hi - lo)) ** 2 * (hi - lo) + lo,
    }
    results = {}
    for name, img in variants.items():
        t0 = time.perf_counter()
        pred = nf.predict_with_nnunet(predictor, img, case.spacing)
        classes = sorted((set(np.unique(case.seg).tolist()) | set(np.unique(pred).tolist())) - {0})
        dice = dice_per_class(pred, case.seg, classes)
        results[name] = {c: float("nan") if d is None else d for c, d in dice.items()}
        log.info("nnU-Net predictor, %s contrast: mean Dice %.4f over %d classes (%.1f s)", name,
                 float(np.nanmean(list(results[name].values()))), len(classes), time.perf_counter() - t0)
    return results


# --------------------------------------------------------------------------------------------------- record


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "scipy", "nibabel", "dynamic_network_architectures", "nnunetv2"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_training_record(folder: Path, *, command: str, seed: int, result: TrainResult, total_time_s: float,
                          threads: int, batch_size: int, dice: Mapping[str, Mapping[int, float]],
                          label_names: Mapping[int, str], ref_classes: Sequence[int]) -> Path:
    """TRAINING_RECORD.md next to plans.json: how the model was made and how well it fits its one case."""
    v = _versions()
    lines = [
        "# TRAINING_RECORD: Dataset900_EdgesegDemoMR",
        "",
        "**Demo and test model trained on ONE case; not a clinical model.** Its Dice figures below are measured",
        "on the very case it was trained on: a pipeline check, not accuracy.",
        "",
        "## How it was made",
        "",
        f"- command: `{command}` (from the repository root)",
        "- script: `tools/train_demo_model.py` (a development tool, not part of the installed package)",
        "- data: `edgeseg/demo/mri/example_mr_sm.nii.gz` with its TotalSegmentator `total_mr` labels",
        "  `tests/fixtures/total_mr_example/example_seg_mr.nii.gz` (23 of 50 labels present)",
        f"- seed: {seed}; iterations: {result.iterations}; batch size: {batch_size}; patch (z, y, x): "
        f"{list(PATCH_SIZE_ZYX)}",
        "- optimiser: AdamW (lr 3e-3, weight decay 3e-5, 20 warm-up iterations, poly 0.9 decay); loss: cross-entropy",
        "  + batch soft Dice over the 50 foreground channels, deep supervision (weights 1, 1/2, 0)",
        f"- precision: forward pass under bf16 autocast: {'yes' if result.bf16 else 'no'} (weights, optimiser and"
        " loss float32; the saved weights are float32)",
        "- augmentation: raw-intensity (before z-scoring) inversion, gamma, clipped contrast, bias field, blur,",
        "  noise; light scale/shift after z-scoring; scaling 0.85-1.15 and rotation +-15 deg in the axial plane;",
        "  no mirroring; foreground oversampling 50 % (class-balanced)",
        f"- training wall time: {result.wall_time_s:.0f} s ({result.wall_time_s / 60:.1f} min); whole script"
        f" incl. evaluation: {total_time_s:.0f} s; load average when training ended (1/5/15 min):"
        f" {' / '.join(f'{v:.1f}' for v in result.load_average)} (other jobs on the same cores slow it down)",
        f"- final loss (mean of the last 50 iterations): {np.mean(result.losses[-50:]):.4f}",
        f"- machine: {_cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {threads}, {platform.system()}"
        f" {platform.release()}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        "## Input contract",
        "",
        "RAS-canonical volume (`nibabel.as_closest_canonical`) in SimpleITK axis order `data.transpose(2, 1, 0)`",
        "= (z, y, x), spacing 3 mm isotropic, one MRI channel of any contrast; 51 outputs (background + the 50",
        "`total_mr` labels numbered as in `total_mr_labels.json`). Trainer `nnUNetTrainerNoMirroring` (no test-time",
        "mirroring).",
        "",
        "## Dice on the training case (nnU-Net's own predictor)",
        "",
        "`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor` on CPU, tile_step_size 0.5, Gaussian on,",
        "mirroring off, `predict_single_npy_array(image_zyx[None], {'spacing': [3.0, 3.0, 3.0]})`.",
        "Means are over the classes present in the reference OR the prediction (a class absent from both has no",
        "Dice and is left out). Besides the original contrast, two variants show the contrast augmentation works:",
        "`inverted` = max + min - x, `gamma2` = gamma 2 on the min-max range.",
        "",
    ]
    names = list(dice)
    lines.append("| label | name | " + " | ".join(names) + " |")
    lines.append("|---:|---|" + "---:|" * len(names))
    all_classes = sorted(set().union(*(set(d) for d in dice.values())))
    for c in all_classes:
        cells = []
        for n in names:
            val = dice[n].get(c)
            cells.append("-" if val is None or math.isnan(val) else f"{val:.3f}")
        tag = "" if c in ref_classes else " (not in reference)"
        lines.append(f"| {c} | {label_names.get(c, '?')}{tag} | " + " | ".join(cells) + " |")
    means = []
    for n in names:
        vals = [x for x in dice[n].values() if not math.isnan(x)]
        means.append(f"**{np.mean(vals):.3f}** ({len(vals)} classes)")
    lines.append("| | mean (present in reference or prediction) | " + " | ".join(means) + " |")
    ref_means = []
    for n in names:
        vals = [dice[n][c] for c in ref_classes if c in dice[n]]
        ref_means.append(f"{np.mean(vals):.3f} ({len(vals)} classes)")
    lines.append("| | mean (present in reference only) | " + " | ".join(ref_means) + " |")
    lines.append("")
    path = folder / "TRAINING_RECORD.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------- build


def build(out_root: Path, *, image: Path, seg: Path, labels_json: Path, iterations: int = 700, seed: int = 0,
          batch_size: int = 2, threads: int = 2, bf16: bool | None = None, command: str = "",
          evaluate_after: bool = True) -> Path:
    """Train the demo model and write its nnU-Net v2 folder under ``out_root``; return the trainer folder."""
    t0 = time.perf_counter()
    case = load_case(image, seg)
    if case.spacing != SPACING_ZYX:
        raise ValueError(f"expected {SPACING_ZYX} mm spacing, got {case.spacing}")
    label_names = load_label_names(labels_json)
    plans, dataset = make_plans(case, label_names, batch_size=batch_size)
    arch = plans["configurations"][nf.CONFIGURATION]["architecture"]
    if bf16 is None:
        bf16 = cpu_has_bf16()
    log.info("training %d iterations, seed %d, batch %d, %d threads, bf16 autocast %s", iterations, seed,
             batch_size, threads, bf16)
    result = train(case, arch, iterations=iterations, seed=seed, batch_size=batch_size, threads=threads,
                   bf16=bf16)
    checkpoint = nf.checkpoint_dict(
        result.state_dict, plans=plans, dataset=dataset, trainer_name=TRAINER_NAME,
        current_epoch=math.ceil(iterations / ITERATIONS_PER_EPOCH), inference_allowed_mirroring_axes=None)
    folder = nf.write_model_folder(out_root, trainer_name=TRAINER_NAME, plans=plans, dataset=dataset,
                                   checkpoint=checkpoint)
    if evaluate_after:
        dice = evaluate(folder, case)
        ref_classes = [int(c) for c in np.unique(case.seg) if c > 0]
        record = write_training_record(
            folder, command=command, seed=seed, result=result, total_time_s=time.perf_counter() - t0,
            threads=threads, batch_size=batch_size, dice=dice, label_names=label_names, ref_classes=ref_classes)
        log.info("wrote %s", record)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train the demo model and write it (default: tests/fixtures/models)."""
    parser = argparse.ArgumentParser(prog=COMMAND,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results root (default: %(default)s)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="the MRI (default: %(default)s)")
    parser.add_argument("--seg", type=Path, default=DEFAULT_SEG, help="its total_mr labels (default: %(default)s)")
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS,
                        help="total_mr_labels.json (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast for the forward pass (default: on when the CPU has native bf16)")
    parser.add_argument("--no-eval", action="store_true", help="skip the nnU-Net predictor check")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else list(argv))])
    folder = build(args.out, image=args.image, seg=args.seg, labels_json=args.labels,
                   iterations=args.iterations, seed=args.seed, batch_size=args.batch_size, threads=args.threads,
                   bf16=args.bf16, command=command, evaluate_after=not args.no_eval)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
