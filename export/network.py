"""Build the nnU-Net network from plans.json and load its checkpoints (torch; build machine only).

The network is built the way nnU-Net's predictor builds it: the architecture class named in the plans'
``architecture.network_class_name`` with ``arch_kwargs`` (the ``_kw_requires_import`` entries resolved to
classes), deep supervision off, eval mode. Weights load with ``strict=True``: a checkpoint that does not match
the plans is refused with the mismatching keys named.

Checkpoints are loaded with ``torch.load(weights_only=True)``: no arbitrary code runs while unpickling. nnU-Net
checkpoints sometimes hold numpy scalars in their training log; for those, only numpy's scalar/dtype
reconstructors are allow-listed (``torch.serialization.safe_globals``), never ``weights_only=False``.
"""
from __future__ import annotations

import logging
import pydoc
from pathlib import Path
from typing import Any

from edgeseg._deps import require
from edgeseg.errors import ModelFolderError
from edgeseg.export.model_folder import ModelFolder

log = logging.getLogger(__name__)


def _numpy_safe_globals() -> list[Any]:
    import numpy as np

    allowed: list[Any] = [np.dtype, np.ndarray]
    try:
        allowed.append(np._core.multiarray.scalar)  # numpy >= 2
        allowed.append(np._core.multiarray._reconstruct)
    except AttributeError:  # pragma: no cover - numpy 1.x
        allowed.append(np.core.multiarray.scalar)
        allowed.append(np.core.multiarray._reconstruct)
    allowed.extend(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool"))
    return allowed


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one nnU-Net checkpoint as safely as torch allows (see module docstring)."""
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
        raise ModelFolderError(
            f"Cannot load checkpoint {path} safely ({type(err).__name__}: {err}). It may be truncated or not an "
            "nnU-Net v2 checkpoint; copy the model again. edgeseg never unpickles arbitrary objects."
        ) from err
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise ModelFolderError(f"{path} is not an nnU-Net v2 checkpoint (no 'network_weights').")
    return ckpt


def network_from_architecture(architecture: dict[str, Any], num_input_channels: int, num_outputs: int,
                              deep_supervision: bool = False, source: Any = "plans") -> Any:
    """Instantiate a plans ``architecture`` entry the way nnU-Net does: the dotted class name and every
    ``_kw_requires_import`` entry located, then ``cls(input_channels, num_classes, deep_supervision, **kwargs)``.
    Untrained weights; ``source`` names the plans in error messages."""
    require("torch", "Building the nnU-Net network")
    require("dynamic_network_architectures", "Building the nnU-Net network")
    class_name = architecture["network_class_name"]
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", []):
        if kwargs.get(key) is not None:
            located = pydoc.locate(kwargs[key])
            if located is None:
                raise ModelFolderError(f"{source}: plans name '{kwargs[key]}' for {key}, which cannot be imported.")
            kwargs[key] = located
    cls = pydoc.locate(class_name)
    if cls is None:
        raise ModelFolderError(
            f"{source}: architecture class '{class_name}' cannot be imported. Install the package that "
            "defines it (dynamic-network-architectures for nnU-Net's U-Nets)."
        )
    try:
        return cls(input_channels=num_input_channels, num_classes=num_outputs, deep_supervision=deep_supervision,
                   **kwargs)
    except TypeError as err:
        raise ModelFolderError(f"{source}: plans arch_kwargs do not fit {class_name}: {err}") from err


def build_network(model: ModelFolder) -> Any:
    """Instantiate the (untrained) network described by the plans, deep supervision off, eval mode."""
    return network_from_architecture(model.configuration["architecture"], model.num_input_channels,
                                     model.num_outputs, source=model.path).eval()


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

    class FoldEnsemble(torch.nn.Module):
        def __init__(self, members: list[Any]) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(members)

        def forward(self, x: Any) -> Any:
            out = self.members[0](x)
            for m in self.members[1:]:
                out = out + m(x)
            return out / len(self.members) if len(self.members) > 1 else out

    return FoldEnsemble(nets).eval()
