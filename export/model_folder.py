"""Locate and validate an nnU-Net v2 trained-model folder (or a release zip of one).

An nnU-Net v2 results folder is ``<Trainer>__<Plans>__<configuration>/`` holding ``plans.json``,
``dataset.json`` and ``fold_N/checkpoint_final.pth``. TotalSegmentator ships them as
``Dataset850_TotalSegMRI_part1_organs_1088subj/nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres/``,
often inside a release zip. This module reads only JSON and file names: no torch.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgeseg.errors import ModelFolderError

log = logging.getLogger(__name__)

_TRAINER_DIR = re.compile(r"^(?P<trainer>[^_].*?)__(?P<plans>.+?)__(?P<configuration>[^_][^/]*)$")
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")


@dataclass(frozen=True)
class ModelFolder:
    """A validated nnU-Net v2 trained-model folder.

    ``configuration`` is the resolved configuration dict from plans.json (``inherits_from`` applied, old plans
    format converted to the ``architecture`` form nnU-Net >= 2.4 writes).
    """

    path: Path
    dataset_name: str
    trainer: str
    plans_name: str
    configuration_name: str
    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    configuration: dict[str, Any]
    checkpoints: dict[str, Path]
    #: label name -> value, background included, as in dataset.json
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def num_input_channels(self) -> int:
        channels = self.dataset_json.get("channel_names", self.dataset_json.get("modality"))
        return len(channels)

    @property
    def num_outputs(self) -> int:
        return max(self.labels.values()) + 1

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {v: k for k, v in sorted(self.labels.items(), key=lambda kv: kv[1]) if v != 0}

    @property
    def name(self) -> str:
        return self.dataset_name


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFolderError(
            f"{path.parent} has no {path.name} ({what}). Point edgeseg at the nnU-Net results folder "
            "'<Trainer>__<Plans>__<configuration>' that holds plans.json, dataset.json and fold_N/."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{path} is not readable JSON ({err}); copy the model folder again.") from err
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} must hold a JSON object.")
    return data


def _resolve_configuration(plans: dict[str, Any], name: str, source: Path) -> dict[str, Any]:
    """The configuration dict with ``inherits_from`` chains applied (as nnU-Net's PlansManager does)."""
    configs = plans.get("configurations", {})
    if name not in configs:
        raise ModelFolderError(
            f"{source}: plans.json has no configuration '{name}' (it has {', '.join(configs) or 'none'})."
        )
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    current: str | None = name
    while current is not None:
        if current in seen or current not in configs:
            raise ModelFolderError(f"{source}: broken inherits_from chain at configuration '{current}'.")
        seen.add(current)
        chain.append(configs[current])
        current = configs[current].get("inherits_from")
    resolved: dict[str, Any] = {}
    for cfg in reversed(chain):
        resolved.update(cfg)
    resolved.pop("inherits_from", None)
    if "architecture" not in resolved:
        resolved = _convert_old_plans(resolved, source)
    return resolved


def _convert_old_plans(cfg: dict[str, Any], source: Path) -> dict[str, Any]:
    """Old nnU-Net v2 plans (< 2.4) describe the U-Net by UNet_class_name etc.: rebuild the architecture entry
    the way nnU-Net's ConfigurationManager does, so old TotalSegmentator weights load too."""
    cls = cfg.get("UNet_class_name")
    classes = {
        "PlainConvUNet": ("dynamic_network_architectures.architectures.unet.PlainConvUNet", "n_conv_per_stage"),
        "ResidualEncoderUNet": ("dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet",
                                "n_blocks_per_stage"),
    }
    if cls not in classes:
        raise ModelFolderError(
            f"{source}: plans.json has neither an 'architecture' entry nor a known UNet_class_name ({cls!r}); "
            "re-run nnUNetv2_plan_experiment with a current nnU-Net or use a supported architecture."
        )
    dim = len(cfg["patch_size"])
    n_stages = len(cfg["n_conv_per_stage_encoder"])
    class_name, blocks_key = classes[cls]
    out = {k: v for k, v in cfg.items() if k not in {
        "UNet_class_name", "UNet_base_num_features", "n_conv_per_stage_encoder", "n_conv_per_stage_decoder",
        "num_pool_per_axis", "pool_op_kernel_sizes", "conv_kernel_sizes", "unet_max_num_features"}}
    out["architecture"] = {
        "network_class_name": class_name,
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [min(cfg["UNet_base_num_features"] * 2 ** i, cfg["unet_max_num_features"])
                                   for i in range(n_stages)],
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": cfg["conv_kernel_sizes"],
            "strides": cfg["pool_op_kernel_sizes"],
            blocks_key: cfg["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": cfg["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    log.info("converted old-format plans of %s to the architecture form", source)
    return out


def _labels(dataset_json: dict[str, Any], source: Path) -> dict[str, int]:
    raw = dataset_json.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise ModelFolderError(f"{source}/dataset.json has no 'labels' mapping.")
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, (list, tuple)):
            raise ModelFolderError(
                f"{source}: label '{name}' is a region ({value}); region-based nnU-Net models are not supported "
                "by edgeseg yet. Export a model trained on plain labels."
            )
        try:
            labels[str(name)] = int(value)
        except (TypeError, ValueError):
            raise ModelFolderError(f"{source}/dataset.json: label '{name}' has a non-integer value {value!r}.") \
                from None
    if labels.get("background", 0) != 0 or 0 not in labels.values():
        raise ModelFolderError(f"{source}/dataset.json: label 0 must be 'background'.")
    values = sorted(labels.values())
    if values != list(range(len(values))):
        raise ModelFolderError(
            f"{source}/dataset.json: label values must be consecutive 0..N (nnU-Net's rule), got {values}."
        )
    return labels


def load_model_folder(path: Path | str, folds: Sequence[int | str] | None = None,
                      checkpoint_name: str = "checkpoint_final.pth") -> ModelFolder:
    """Validate an nnU-Net v2 results folder and find the checkpoints of ``folds`` (None: every fold present).

    ``path`` may be the trainer folder itself or a folder containing exactly one trainer folder (for example
    ``Dataset850_.../``). Raises :class:`ModelFolderError` naming what is missing.
    """
    root = Path(path)
    if not root.exists():
        raise ModelFolderError(f"Model folder {root} does not exist. Check the path.")
    if not root.is_dir():
        raise ModelFolderError(f"{root} is not a folder; pass an nnU-Net results folder or a .zip of one.")
    if not (root / "plans.json").exists():
        candidates = [p for p in root.iterdir() if p.is_dir() and (p / "plans.json").is_file()]
        if len(candidates) == 1:
            root = candidates[0]
        elif len(candidates) > 1:
            raise ModelFolderError(
                f"{root} holds several trainer folders ({', '.join(sorted(p.name for p in candidates))}); "
                "pass the one to export."
            )
    plans = _read_json(root / "plans.json", "the nnU-Net plans")
    dataset_json = _read_json(root / "dataset.json", "the nnU-Net dataset description")
    m = _TRAINER_DIR.match(root.name)
    trainer, plans_name, configuration_name = (m["trainer"], m["plans"], m["configuration"]) if m else \
        ("unknown", plans.get("plans_name", "nnUNetPlans"), "3d_fullres")
    configuration = _resolve_configuration(plans, configuration_name, root)
    labels = _labels(dataset_json, root)

    present = sorted(p.name[len("fold_"):] for p in root.glob("fold_*") if p.is_dir())
    wanted = [str(f) for f in folds] if folds else present
    if not wanted:
        raise ModelFolderError(f"{root} has no fold_N folders; the model was not trained or not copied whole.")
    checkpoints: dict[str, Path] = {}
    for fold in wanted:
        ckpt = root / f"fold_{fold}" / checkpoint_name
        if not ckpt.is_file():
            have = ", ".join(present) or "none"
            raise ModelFolderError(
                f"{root}: fold {fold} has no {checkpoint_name} (folds present: {have}). Choose folds with --folds."
            )
        checkpoints[fold] = ckpt
    dataset_name = plans.get("dataset_name") or root.parent.name
    return ModelFolder(root, dataset_name, trainer, plans_name, configuration_name, plans, dataset_json,
                       configuration, checkpoints, labels)


def extract_release_zip(zip_path: Path, into: Path | None = None) -> Path:
    """Extract an nnU-Net/TotalSegmentator release zip safely (no absolute paths or '..') and return the
    folder it was extracted to. The caller deletes it (``into`` defaults to a new temp folder)."""
    if not zipfile.is_zipfile(zip_path):
        raise ModelFolderError(f"{zip_path} is not a zip file. Pass an nnU-Net results folder or its release zip.")
    target = Path(into) if into else Path(tempfile.mkdtemp(prefix="edgeseg-model-"))
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        if not any(n.endswith("plans.json") for n in names):
            shutil.rmtree(target, ignore_errors=True)
            raise ModelFolderError(
                f"{zip_path} holds no plans.json: it is not an nnU-Net v2 model release zip."
            )
        for info in zf.infolist():
            rel = Path(info.filename)
            if rel.is_absolute() or ".." in rel.parts:
                shutil.rmtree(target, ignore_errors=True)
                raise ModelFolderError(f"{zip_path} contains an unsafe path '{info.filename}'; refusing to extract.")
        zf.extractall(target)
    return target


def find_model_folders(root: Path) -> list[Path]:
    """Every trainer folder (holding plans.json and dataset.json) below ``root``, sorted by path."""
    return sorted(p.parent for p in root.rglob("plans.json") if (p.parent / "dataset.json").is_file())


def open_model(path: Path | str, folds: Sequence[int | str] | None = None,
               workdir: Path | None = None) -> list[ModelFolder]:
    """Open a model folder, a folder of several parts, or a release zip (extracted below ``workdir``).

    Returns one :class:`ModelFolder` per part found, in path order (Dataset850 before Dataset851).
    """
    p = Path(path)
    if p.is_file():
        p = extract_release_zip(p, Path(tempfile.mkdtemp(prefix="zip-", dir=workdir)) if workdir else None)
    if not p.exists():
        raise ModelFolderError(f"Model path {p} does not exist. Check the path.")
    if (p / "plans.json").exists():
        return [load_model_folder(p, folds)]
    found = find_model_folders(p) if p.is_dir() else []
    if not found:
        raise ModelFolderError(
            f"No nnU-Net model below {p}: expected '<Trainer>__<Plans>__<configuration>/' folders with plans.json, "
            "dataset.json and fold_N/checkpoint_final.pth."
        )
    return [load_model_folder(f, folds) for f in found]
