"""Build the nnU-Net network from plans.json and load its checkpoints (torch; build machine only).

The network is built the way nnU-Net's predictor builds it: the architecture class named in the plans'
``architecture.network_class_name`` with ``arch_kwargs`` (the ``_kw_requires_import`` entries resolved to
classes), deep supervision off, eval mode. Unlike nnU-Net, only allow-listed class paths are imported, and only
after the plans' strings were checked (``model_folder.check_architecture``): a plans file from the internet
cannot make the export import or call anything else. Weights load with ``strict=True``: a checkpoint that does
not match the plans is refused with the mismatching keys named.

Checkpoints are loaded with ``torch.load(weights_only=True)``: no arbitrary code runs while unpickling. nnU-Net
checkpoints sometimes hold numpy scalars in their training log; for those, only numpy's scalar/dtype
reconstructors are allow-listed (``torch.serialization.safe_globals``), never ``weights_only=False``.
"""
from __future__ import annotations

import importlib
import logging
import pickle
import pydoc
import re
from pathlib import Path
from typing import Any

from edgeseg._deps import require
from edgeseg.errors import ModelFolderError
from edgeseg.export.model_folder import ModelFolder, check_architecture

log = logging.getLogger(__name__)


def _numpy_safe_globals() -> list[Any]:
    import numpy as np

    allowed: list[Any] = [np.dtype, np.ndarray]
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed.append(multiarray.scalar)
    allowed.append(multiarray._reconstruct)
    allowed.extend(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool"))
    return allowed


def _refused_by_weights_only(err: BaseException) -> str | None:
    """What torch's weights-only unpickler refused (``GLOBAL os.system``...), or None for another failure.

    torch's own message goes on to suggest ``weights_only=False``; only the refused item is kept."""
    text = str(err)
    if not isinstance(err, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    found = re.search(r"GLOBAL ([A-Za-z_][\w.]*)", text)  # "Unsupported global: GLOBAL x", "unsupported GLOBAL x"
    if found:
        return f"GLOBAL {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: (.+?)(?:\. Please|$)", text, re.MULTILINE)
    return found.group(1) if found else "objects outside torch's weights-only set"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one nnU-Net checkpoint as safely as torch allows (see module docstring).

    A checkpoint holding pickled objects beyond tensors, plain containers and numpy scalars (a class or function
    such as ``os.system``: code that would run on loading) is refused with a message saying so; a file that
    cannot be read at all (truncated, not a checkpoint) gets another."""
    torch = require("torch", "Loading nnU-Net checkpoints")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as first:  # noqa: BLE001 - retry with numpy scalars allow-listed only
            if "weights_only" not in str(first) and "Unsupported global" not in str(first):
                raise
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        refused = _refused_by_weights_only(err)
        if refused is not None:
            raise ModelFolderError(
                f"Refused checkpoint {path}: it contains pickled code or objects that are not allowed in a "
                f"checkpoint ({refused}), which would run when the file is unpickled; "
                "torch.load(weights_only=True) refused it. edgeseg never unpickles arbitrary objects, and neither "
                "should you (no weights_only=False): an nnU-Net checkpoint holds only tensors, numbers and strings. "
                "Get the model again from its publisher and compare its checksum; for a model you trained, re-save "
                "the checkpoint without custom objects."
            ) from err
        raise ModelFolderError(
            f"Cannot load checkpoint {path} ({type(err).__name__}: {err}). It may be truncated or not an "
            "nnU-Net v2 checkpoint; copy the model again."
        ) from err
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise ModelFolderError(f"{path} is not an nnU-Net v2 checkpoint (no 'network_weights').")
    return ckpt


def _import_class(candidates: tuple[str, ...]) -> Any:
    """The first of the (allow-listed) dotted paths that imports as a class, or None."""
    for dotted in candidates:
        located = pydoc.locate(dotted)
        if isinstance(located, type):
            return located
    return None


def network_from_architecture(architecture: dict[str, Any], num_input_channels: int, num_outputs: int,
                              deep_supervision: bool = False, source: Any = "plans",
                              where: str = "architecture") -> Any:
    """Instantiate a plans ``architecture`` entry the way nnU-Net does: the dotted class name and every
    ``_kw_requires_import`` entry imported, then ``cls(input_channels, num_classes, deep_supervision, **kwargs)``;
    but the entry is checked first and only allow-listed classes are imported (:func:`check_architecture`).
    Untrained weights; ``source`` (the plans file) and ``where`` (the entry's key path) name it in errors."""
    imports = check_architecture(architecture, source, where)  # before anything named in the plans is imported
    require("torch", "Building the nnU-Net network")
    require("dynamic_network_architectures", "Building the nnU-Net network")
    class_name = architecture["network_class_name"]
    kwargs = dict(architecture["arch_kwargs"])
    for key, candidates in imports.items():
        located = _import_class(candidates)
        if located is None:
            name = class_name if key == "network_class_name" else kwargs[key]
            raise ModelFolderError(
                f"{source}: key '{where}.{'' if key == 'network_class_name' else 'arch_kwargs.'}{key}' names "
                f"'{name}', which cannot be imported here. Install the export extra (pip install 'edgeseg[export]': "
                "torch and dynamic-network-architectures), or a newer dynamic-network-architectures."
            )
        if key != "network_class_name":
            kwargs[key] = located
    cls = _import_class(imports["network_class_name"])
    try:
        return cls(input_channels=num_input_channels, num_classes=num_outputs, deep_supervision=deep_supervision,
                   **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ModelFolderError(
            f"{source}: the plans' {where}.arch_kwargs do not fit {class_name} ({type(err).__name__}: {err}). "
            "The plans belong to another nnU-Net/dynamic-network-architectures version or were edited; export "
            "the folder the model was trained with."
        ) from err


def build_network(model: ModelFolder) -> Any:
    """Instantiate the (untrained) network described by the plans, deep supervision off, eval mode."""
    return network_from_architecture(model.configuration["architecture"], model.num_input_channels,
                                     model.num_outputs, source=model.path / "plans.json",
                                     where=f"configurations.{model.configuration_name}.architecture").eval()


def load_fold_networks(model: ModelFolder) -> list[Any]:
    """One network per fold with its checkpoint loaded strictly."""
    nets = []
    for fold, ckpt_path in model.checkpoints.items():
        ckpt = load_checkpoint(ckpt_path)
        net = build_network(model)
        try:
            net.load_state_dict(ckpt["network_weights"], strict=True)
        except RuntimeError as err:
            raise ModelFolderError(
                f"Checkpoint {ckpt_path} does not match the network described by {model.path}/plans.json "
                f"({str(err).splitlines()[0]}...). The checkpoint belongs to another plans/configuration or "
                "dataset (number of labels); export the folder it was trained with."
            ) from err
        trainer = ckpt.get("trainer_name")
        log.info("loaded fold %s of %s (trainer %s)", fold, model.name, trainer)
        nets.append(net.eval())
    return nets


def mirroring_axes_from_checkpoint(model: ModelFolder) -> tuple[int, ...] | None:
    """``inference_allowed_mirroring_axes`` recorded by the trainer (None when the trainer disallows it)."""
    ckpt = load_checkpoint(next(iter(model.checkpoints.values())))
    axes = ckpt.get("inference_allowed_mirroring_axes")
    trainer = str(ckpt.get("trainer_name", model.trainer))
    if "NoMirroring" in trainer:
        return None
    return tuple(int(a) for a in axes) if axes is not None else None


def fold_ensemble(nets: list[Any]) -> Any:
    """A module whose output is the mean of the folds' logits (nnU-Net averages fold logits)."""
    torch = require("torch", "Building the fold ensemble")

    module_base: Any = torch.nn.Module  # a class only known at run time (torch is imported on demand)

    class FoldEnsemble(module_base):
        def __init__(self, members: list[Any]) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(members)

        def forward(self, x: Any) -> Any:
            out = self.members[0](x)
            for m in self.members[1:]:
                out = out + m(x)
            return out / len(self.members) if len(self.members) > 1 else out

    return FoldEnsemble(nets).eval()
