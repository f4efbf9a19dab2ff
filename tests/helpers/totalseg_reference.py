"""TotalSegmentator itself (the released ``totalsegmentator`` package of the test extra) as the reference.

edgeseg promises TotalSegmentator's own masks. The reference is therefore TotalSegmentator's whole wrapper
(reorientation, input resampling, int32 cast, nnU-Net, part merging, resampling back), run on the same trained
weights that edgeseg exports:

* :func:`install_standins` writes small *trained* models where TotalSegmentator looks for its ``total_mr``
  weights (``$TOTALSEG_HOME_DIR/nnunet/results``): the committed demo model (trained on the real MRI) as
  Dataset852 (3 mm, ``--fast``), and two part models cut from it as Dataset850 (organs) and Dataset851 (muscles
  and bones) for the default 1.5 mm two-part path. A part model keeps the demo network and only the output
  channels of its part's structures (numbered from 1 in the part, as TotalSegmentator's part models are), so it
  is as trained as the demo model. Like TotalSegmentator's part models, they are planned at 1.5 mm (the demo
  network was trained at 3 mm: their masks are poorer, but the same on both sides).
* :func:`run_totalsegmentator` runs ``totalsegmentator(..., task="total_mr")`` in a child process (nnU-Net's
  paths are read at import time) with usage statistics off and returns its wall time and peak memory. The
  child substitutes only nnU-Net's trainer-class lookup, as :mod:`helpers.nnunet_reference` does (PyPI's
  torchvision cannot load beside the CPU torch here).
* :func:`clinical_volume` builds NIfTI volumes from the real MRI on clinical grids (in-plane 0.7-1.5 mm,
  3-6 mm slices, oblique and LPS/RAS storage).

Run as a script it is that child: ``python totalseg_reference.py --home H --input IN --output OUT [--fast]``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

TRAINER_DIR = "nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres"
TRAINER = "nnUNetTrainer_2000epochs_NoMirroring"
DATASETS = {
    "850": "Dataset850_TotalSegMRI_part1_organs_1088subj",
    "851": "Dataset851_TotalSegMRI_part2_muscles_1088subj",
    "852": "Dataset852_TotalSegMRI_total_3mm_1088subj",
}


def _results(home: Path) -> Path:
    return home / "nnunet" / "results"


def install_standins(home: Path, demo_model: Path, parts_json: Path) -> dict[str, Path]:
    """Write the three stand-in ``total_mr`` models under ``home`` (a ``TOTALSEG_HOME_DIR``); returns the
    trainer folder per dataset id ("850", "851", "852")."""
    import torch

    from edgeseg.export.network import load_checkpoint

    demo_dataset = json.loads((demo_model / "dataset.json").read_text())
    demo_plans = json.loads((demo_model / "plans.json").read_text())
    checkpoint = load_checkpoint(demo_model / "fold_0" / "checkpoint_final.pth")
    by_name = {name: int(value) for name, value in demo_dataset["labels"].items()}
    parts = json.loads(parts_json.read_text())
    out: dict[str, Path] = {}
    for key, dataset_name in DATASETS.items():
        if key == "852":
            labels = {int(v): n for n, v in by_name.items() if int(v) > 0}
        else:
            labels = {int(k): n for k, n in parts[dataset_name].items()}
        channels = [0] + [by_name[labels[k]] for k in sorted(labels)]
        folder = _results(home) / dataset_name / TRAINER_DIR
        (folder / "fold_0").mkdir(parents=True, exist_ok=True)
        dataset = {**demo_dataset, "labels": {"background": 0, **{labels[k]: k for k in sorted(labels)}}}
        plans = {**demo_plans, "dataset_name": dataset_name}
        if key != "852":  # TotalSegmentator's part models are planned at its 1.5 mm task spacing
            configurations = json.loads(json.dumps(demo_plans["configurations"]))
            configurations["3d_fullres"]["spacing"] = [1.5, 1.5, 1.5]
            plans["configurations"] = configurations
        weights = {}
        for name, tensor in checkpoint["network_weights"].items():
            weights[name] = tensor[channels].clone() if ".seg_layers." in name else tensor
        ckpt = {**checkpoint, "network_weights": weights, "trainer_name": TRAINER,
                "init_args": {**checkpoint["init_args"], "plans": plans, "dataset_json": dataset}}
        (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
        (folder / "plans.json").write_text(json.dumps(plans, indent=2))
        torch.save(ckpt, folder / "fold_0" / "checkpoint_final.pth")
        out[key] = folder
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps(
        {"totalseg_id": "totalseg_edgeseg_tests", "send_usage_stats": False, "prediction_counter": 0}))
    return out


def run_totalsegmentator(home: Path, image: Path, output: Path, *, fast: bool,
                         resampling_order: int | None = None) -> dict[str, Any]:
    """TotalSegmentator ``total_mr`` (``--ml``, CPU) on ``image`` in a child process; the multilabel map is
    written to ``output``. Returns {"seconds": call time, "peak_rss_mb": peak of the child and its workers}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--home", str(home), "--input", str(image),
           "--output", str(output)]
    if fast:
        cmd.append("--fast")
    if resampling_order is not None:
        cmd += ["--resampling-order", str(resampling_order)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTALSEG_", "nnUNet_"))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"TotalSegmentator failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def clinical_volume(real_mri: Path, out: Path, shape: Sequence[int], spacing: Sequence[float], *,
                    rotate_deg: Sequence[float] = (0.0, 0.0, 0.0), storage: str = "LPS") -> Path:
    """The real MRI on a clinical grid: resampled (order 1) to ``spacing`` (i, j, k mm), reflected or cut to
    ``shape``, int16. ``storage`` "LPS" keeps the source's axis directions (L, P, S), "RAS" stores i and j
    reversed; ``rotate_deg`` rotates the grid about the world x, y, z axes (an oblique acquisition)."""
    import nibabel as nib
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    src = nib.load(real_mri)
    zoom = np.asarray(src.header.get_zooms()[:3], dtype=float) / np.asarray(spacing, dtype=float)
    data = ndimage.zoom(np.asarray(src.dataobj, dtype=np.float32), zoom, order=1)
    pads = [(0, max(0, s - d)) for s, d in zip(shape, data.shape)]
    data = np.pad(data, pads, mode="reflect")[: shape[0], : shape[1], : shape[2]]
    directions = src.affine[:3, :3] / np.sqrt((src.affine[:3, :3] ** 2).sum(axis=0))
    affine = np.eye(4)
    affine[:3, :3] = directions * np.asarray(spacing, dtype=float)[None, :]
    affine[:3, 3] = src.affine[:3, 3]
    if storage == "RAS":
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
        affine = affine @ flip
        data = data[::-1, ::-1]
    if any(rotate_deg):
        rot = np.eye(4)
        rot[:3, :3] = Rotation.from_euler("xyz", rotate_deg, degrees=True).as_matrix()
        affine = rot @ affine
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data).astype(np.int16), affine), out)
    return out


def agreement(ours: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Voxel agreement, per-structure Dice (structures in either map) and their mean and minimum."""
    from edgeseg.export.metrics import dice_per_class

    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    classes = sorted(int(c) for c in set(np.unique(ours)) | set(np.unique(reference)) if c != 0)
    dice = dice_per_class(ours, reference, classes)
    worst = min(dice, key=dice.get) if dice else None
    return {"agreement": float(np.mean(ours == reference)), "structures": len(dice),
            "mean_dice": float(np.mean(list(dice.values()))) if dice else 1.0,
            "min_dice": float(dice[worst]) if dice else 1.0, "worst": worst, "dice": dice}


def _child(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--resampling-order", type=int)
    args = p.parse_args(argv)
    os.environ["TOTALSEG_HOME_DIR"] = str(args.home)
    import nnunetv2.inference.predict_from_raw_data as predict_module
    import totalsegmentator.nnunet  # noqa: F401 - installs TotalSegmentator's own trainer lookup first
    from totalsegmentator.python_api import totalsegmentator

    from helpers.testmodels._nnunet_folder import find_trainer_class

    predict_module.recursive_find_trainer_class_by_name = find_trainer_class
    kwargs: dict[str, Any] = {}
    if args.resampling_order is not None:
        kwargs["resampling_order"] = args.resampling_order
    peak = _TreePeak()
    t0 = time.perf_counter()
    totalsegmentator(args.input, args.output, ml=True, task="total_mr", fast=args.fast, device="cpu", quiet=True,
                     **kwargs)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak.stop()}))
    return 0


class _TreePeak:
    """Peak of the summed resident memory of this process and its worker processes (nnU-Net starts some),
    sampled every 50 ms (``getrusage`` cannot add up a tree, and its maximum survives ``exec``)."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._me, self._peak, self._done = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._done.wait(0.05):
            total = 0
            for proc in [self._me, *self._me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self._peak = max(self._peak, total)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self._peak / 2**20


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(_child())
