"""Locate and validate an nnU-Net v2 trained-model folder (or a release zip of one).

An nnU-Net v2 results folder is ``<Trainer>__<Plans>__<configuration>/`` holding ``plans.json``,
``dataset.json`` and ``fold_N/checkpoint_final.pth``. TotalSegmentator ships them as
``Dataset850_TotalSegMRI_part1_organs_1088subj/nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres/``,
often inside a release zip. This module reads only JSON and file names: no torch.

Release zips come from the internet, so plans.json is untrusted input: every value the export uses is checked
with its key path (``configurations.3d_fullres.patch_size``) before anything is built, and the class paths nnU-Net
imports by name (``network_class_name``, ``arch_kwargs.conv_op/norm_op/dropout_op/nonlin``) must be on an
allow-list of the classes nnU-Net v2 and TotalSegmentator use (:data:`ALLOWED_NETWORK_CLASSES`,
:data:`ALLOWED_CLASS_PATHS`). The strings are checked; nothing named in a plans file is imported before that.
"""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeGuard

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
        channels: Any = self.dataset_json.get("channel_names", self.dataset_json.get("modality"))
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


def _torch_nn(module: str, *names: str) -> dict[str, tuple[str, ...]]:
    """``torch.nn.X`` and ``torch.nn.modules.<module>.X`` (the form nnU-Net's planner writes) for each X."""
    out: dict[str, tuple[str, ...]] = {}
    for name in names:
        real = f"torch.nn.modules.{module}.{name}"
        out[real] = out[f"torch.nn.{name}"] = (real,)
    return out


_DNA = "dynamic_network_architectures.architectures"

#: ``network_class_name`` values edgeseg builds: plans string -> dotted paths tried in order (older
#: dynamic-network-architectures and nnU-Net's pre-2.4 plans conversion name ``residual_unet``, which newer
#: releases merged into ``unet``). Primus and other trainer-built networks are not described by plans.
ALLOWED_NETWORK_CLASSES: dict[str, tuple[str, ...]] = {
    f"{_DNA}.unet.PlainConvUNet": (f"{_DNA}.unet.PlainConvUNet",),
    f"{_DNA}.unet.ResidualEncoderUNet": (f"{_DNA}.unet.ResidualEncoderUNet",),
    f"{_DNA}.unet.ResidualUNet": (f"{_DNA}.unet.ResidualUNet",),
    f"{_DNA}.residual_unet.ResidualEncoderUNet": (f"{_DNA}.residual_unet.ResidualEncoderUNet",
                                                  f"{_DNA}.unet.ResidualEncoderUNet"),
    f"{_DNA}.residual_unet.ResidualUNet": (f"{_DNA}.residual_unet.ResidualUNet", f"{_DNA}.unet.ResidualUNet"),
}

#: the ``arch_kwargs`` entries nnU-Net imports by dotted name (``_kw_requires_import``) and the classes each may
#: name: plans string -> dotted path to import
ALLOWED_CLASS_PATHS: dict[str, dict[str, tuple[str, ...]]] = {
    "conv_op": _torch_nn("conv", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                         "ConvTranspose3d"),
    "norm_op": {**_torch_nn("instancenorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"),
                **_torch_nn("batchnorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
                **_torch_nn("normalization", "GroupNorm", "LayerNorm")},
    "dropout_op": _torch_nn("dropout", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout"),
    "nonlin": _torch_nn("activation", "LeakyReLU", "ReLU", "ReLU6", "PReLU", "ELU", "SELU", "CELU", "GELU",
                        "SiLU", "Mish", "Hardswish", "Tanh", "Sigmoid"),
}
_KWARGS_ENTRIES = ("norm_op_kwargs", "dropout_op_kwargs", "nonlin_kwargs")

#: bounds far beyond any nnU-Net plan (TotalSegmentator MRI: patch 128^3, 6 stages, <= 320 features, strides 2,
#: kernels 3) that keep an absurd plans file from allocating the machine away
MAX_PATCH_EDGE = 1024
MAX_PATCH_VOXELS = 512 ** 3
MAX_STAGES = 12
MAX_FEATURES = 1024
MAX_KERNEL = 15
MAX_STRIDE = 16
MAX_BLOCKS = 16

_DAMAGED = ("nnU-Net's planner never writes this: the plans file is damaged or was edited. Get the model folder "
            "(or release zip) again from its publisher, or re-run nnU-Net's planning for a model you trained.")
_UNSAFE = ("edgeseg imports only the classes nnU-Net v2 and TotalSegmentator plans use, because a plans file "
           "naming anything else could run code on this machine. Do not export this model; get it again from its "
           "publisher and compare its checksum.")


def _failer(source: Path | str) -> Callable[..., ModelFolderError]:
    def fail(key: str, problem: str, fix: str = _DAMAGED) -> ModelFolderError:
        return ModelFolderError(f"{source}: key '{key}' {problem}. {fix}")
    return fail


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _short_names(paths: Sequence[str]) -> str:
    return ", ".join(sorted({p.rsplit(".", 1)[-1] for p in paths}))


def check_architecture(architecture: Any, source: Path | str, where: str = "architecture",
                       patch_size: Sequence[int] | None = None) -> dict[str, tuple[str, ...]]:
    """Check a plans ``architecture`` entry without importing anything; errors name ``where`` + the key path.

    Class paths must be on the allow-lists; the network's sizes must be whole numbers within bounds and agree
    with the number of stages and (given ``patch_size``) with the patch's dimensions, which the total stride
    must divide. Returns the dotted paths to import: ``"network_class_name"`` and every ``_kw_requires_import``
    entry that is not null -> candidates to try in order (all allow-listed).
    """
    fail = _failer(source)
    if not isinstance(architecture, dict):
        raise fail(where, "must be an object with network_class_name, arch_kwargs and _kw_requires_import")
    key = f"{where}.network_class_name"
    class_name = architecture.get("network_class_name")
    if not isinstance(class_name, str):
        raise fail(key, f"is {class_name!r}, not a dotted class name")
    if class_name not in ALLOWED_NETWORK_CLASSES:
        raise fail(key, f"names '{class_name}', which is not one of the nnU-Net U-Nets edgeseg builds "
                        f"({_short_names(list(ALLOWED_NETWORK_CLASSES))} from dynamic_network_architectures)",
                   _UNSAFE)
    imports = {"network_class_name": ALLOWED_NETWORK_CLASSES[class_name]}
    kwargs = architecture.get("arch_kwargs")
    if not isinstance(kwargs, dict):
        raise fail(f"{where}.arch_kwargs", f"is {type(kwargs).__name__}, not an object of keyword arguments")
    required = architecture.get("_kw_requires_import", [])
    if not isinstance(required, (list, tuple)) or not all(isinstance(k, str) for k in required):
        raise fail(f"{where}._kw_requires_import", "must be a list of arch_kwargs names")
    for k in required:
        if k not in ALLOWED_CLASS_PATHS:
            raise fail(f"{where}._kw_requires_import", f"lists '{k}', but nnU-Net imports only "
                                                       f"{', '.join(ALLOWED_CLASS_PATHS)} by name", _UNSAFE)
    for k, allowed in ALLOWED_CLASS_PATHS.items():
        value = kwargs.get(k)
        if value is None:
            continue
        key = f"{where}.arch_kwargs.{k}"
        if not isinstance(value, str):
            raise fail(key, f"is {value!r}, not a dotted class name or null")
        if value not in allowed:
            raise fail(key, f"names '{value}', which is not an allowed {k} (torch.nn {_short_names(list(allowed))})",
                       _UNSAFE)
        if k in required:
            imports[k] = allowed[value]
    for k in _KWARGS_ENTRIES:
        if kwargs.get(k) is not None and not isinstance(kwargs[k], dict):
            raise fail(f"{where}.arch_kwargs.{k}", f"is {type(kwargs[k]).__name__}, not an object of keyword "
                                                   "arguments or null")
    _check_sizes(kwargs, class_name, fail, f"{where}.arch_kwargs", patch_size)
    return imports


def _check_sizes(kwargs: dict[str, Any], class_name: str, fail: Callable[..., ModelFolderError], where: str,
                 patch_size: Sequence[int] | None) -> None:
    """The U-Net's stage counts, features, kernels and strides (dynamic_network_architectures' conventions: an
    int, or one entry per stage; kernels and strides per stage an int or one entry per axis)."""
    n_stages = kwargs.get("n_stages")
    if not _is_int(n_stages) or not 1 <= n_stages <= MAX_STAGES:
        raise fail(f"{where}.n_stages", f"is {n_stages!r}; it must be a whole number from 1 to {MAX_STAGES}")
    ndim = len(patch_size) if patch_size is not None else None

    def per_stage(name: str, count: int, high: int, per_axis: bool = False) -> list[Any]:
        key = f"{where}.{name}"
        if name not in kwargs:
            raise fail(key, f"is missing ({class_name.rsplit('.', 1)[-1]} needs it)")
        value = kwargs[name]
        entries = [value] * count if _is_int(value) else value
        if not isinstance(entries, list) or len(entries) != count:
            raise fail(key, f"is {value!r}; it must be a whole number or a list of {count} (one per stage"
                            f"{'' if count == n_stages else ' but the last'})")
        out = []
        for i, entry in enumerate(entries):
            if not per_axis:
                axes = [entry]
            else:
                axes = [entry] * (ndim or 1) if _is_int(entry) else entry
                if not isinstance(axes, list) or not axes or (ndim is not None and len(axes) != ndim):
                    raise fail(f"{key}[{i}]", f"is {entry!r}; it must be a whole number or a list with one entry "
                                              f"per axis of the patch{f' ({ndim})' if ndim else ''}")
            for a in axes:
                if not _is_int(a) or not 1 <= a <= high:
                    raise fail(f"{key}[{i}]", f"is {entry!r}; entries must be whole numbers from 1 to {high}")
            out.append(axes if per_axis else axes[0])
        return out

    per_stage("features_per_stage", n_stages, MAX_FEATURES)
    per_stage("kernel_sizes", n_stages, MAX_KERNEL, per_axis=True)
    strides = per_stage("strides", n_stages, MAX_STRIDE, per_axis=True)
    per_stage("n_conv_per_stage" if class_name.endswith(".PlainConvUNet") else "n_blocks_per_stage", n_stages,
              MAX_BLOCKS)
    per_stage("n_conv_per_stage_decoder", n_stages - 1, MAX_BLOCKS)
    if patch_size is not None:
        for axis, edge in enumerate(patch_size):
            total = math.prod(s[axis] for s in strides)
            if edge % total:
                raise fail(f"{where}.strides", f"downsamples axis {axis} by {total} in all, which does not divide "
                                               f"the patch edge {edge} (patch_size {list(patch_size)})")


def _check_configuration(plans: dict[str, Any], cfg: dict[str, Any], origin: dict[str, str], name: str,
                         source: Path) -> None:
    """Check the values of a resolved configuration the export uses, naming where each came from."""
    fail = _failer(source)

    def key(k: str) -> str:
        return f"configurations.{origin.get(k, name)}.{k}"

    patch = cfg.get("patch_size")
    if not isinstance(patch, list) or len(patch) != 3:
        raise fail(key("patch_size"), f"is {patch!r}; it must list 3 whole numbers (only 3-D configurations such "
                                      "as 3d_fullres are supported)")
    for edge in patch:
        if not _is_int(edge) or not 1 <= edge <= MAX_PATCH_EDGE:
            raise fail(key("patch_size"), f"is {patch}; each entry must be a whole number from 1 to {MAX_PATCH_EDGE}")
    if math.prod(patch) > MAX_PATCH_VOXELS:
        raise fail(key("patch_size"), f"is {patch}: {math.prod(patch)} voxels per patch, more than "
                                      f"{MAX_PATCH_VOXELS}")
    spacing = cfg.get("spacing")
    if (not isinstance(spacing, list) or len(spacing) != 3
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0
                       for s in spacing)):
        raise fail(key("spacing"), f"is {spacing!r}; it must list 3 positive millimetre values")
    for k, kind in (("normalization_schemes", str), ("use_mask_for_norm", bool)):
        value = cfg.get(k)
        if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
            raise fail(key(k), f"is {value!r}; it must be a list with one {kind.__name__} per input channel")
    forward = plans.get("transpose_forward", [0, 1, 2])
    backward = plans.get("transpose_backward", [0, 1, 2])
    for k, perm in (("transpose_forward", forward), ("transpose_backward", backward)):
        if not isinstance(perm, list) or not all(_is_int(i) for i in perm) or sorted(perm) != [0, 1, 2]:
            raise fail(k, f"is {perm!r}; it must be a permutation of [0, 1, 2]")
    if [forward[i] for i in backward] != [0, 1, 2]:
        raise fail("transpose_backward", f"is {backward}, not the inverse of transpose_forward {forward}")


def _resolve_configuration(plans: dict[str, Any], name: str, source: Path) -> dict[str, Any]:
    """The configuration dict with ``inherits_from`` chains applied (as nnU-Net's PlansManager does), checked
    (see :func:`check_architecture`): raises :class:`ModelFolderError` naming the plans.json key path."""
    fail = _failer(source / "plans.json")
    configs = plans.get("configurations", {})
    if not isinstance(configs, dict):
        raise fail("configurations", "must be an object mapping configuration names to their settings")
    if name not in configs:
        raise ModelFolderError(
            f"{source}: plans.json has no configuration '{name}' (it has {', '.join(configs) or 'none'})."
        )
    chain: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    current: Any = name
    while current is not None:
        if not isinstance(current, str) or current in seen or current not in configs:
            raise ModelFolderError(f"{source}: broken inherits_from chain at configuration '{current}'.")
        if not isinstance(configs[current], dict):
            raise fail(f"configurations.{current}", "must be an object")
        seen.add(current)
        chain.append((current, configs[current]))
        current = configs[current].get("inherits_from")
    resolved: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for cfg_name, cfg in reversed(chain):
        resolved.update(cfg)
        origin.update(dict.fromkeys(cfg, cfg_name))
    resolved.pop("inherits_from", None)
    _check_configuration(plans, resolved, origin, name, source / "plans.json")
    if "architecture" not in resolved:
        try:
            resolved = _convert_old_plans(resolved, source)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise fail(f"configurations.{name}", f"is in the pre-2.4 plans format but malformed "
                                                 f"({type(err).__name__}: {err})") from err
        where = f"configurations.{name}.architecture (converted from the pre-2.4 plans format)"
    else:
        where = f"configurations.{origin['architecture']}.architecture"
    check_architecture(resolved["architecture"], source / "plans.json", where, resolved["patch_size"])
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
