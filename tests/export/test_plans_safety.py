"""A model folder from the internet cannot run code on the export machine, and absurd plans are refused with
their key path (issue 9, finding 3).

plans.json names classes that nnU-Net imports with ``pydoc.locate`` and calls with the plans' kwargs
(``"nonlin": "os.system", "nonlin_kwargs": {"command": ...}`` ran the command). Class paths are now checked
against an allow-list before anything is imported; checkpoints holding pickled code are refused with a message
that says so.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from edgeseg.errors import ModelFolderError
from edgeseg.export.model_folder import (ALLOWED_CLASS_PATHS, ALLOWED_NETWORK_CLASSES, check_architecture,
                                         load_model_folder)
from edgeseg.export.network import load_checkpoint, load_fold_networks, network_from_architecture

ARCH = "configurations.3d_fullres.architecture"


def _edit_plans(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    plans = json.loads((folder / "plans.json").read_text())
    edit(plans)
    (folder / "plans.json").write_text(json.dumps(plans))


def _cfg(plans: dict[str, Any]) -> dict[str, Any]:
    return plans["configurations"]["3d_fullres"]


def _kwargs(plans: dict[str, Any]) -> dict[str, Any]:
    return _cfg(plans)["architecture"]["arch_kwargs"]


def _architecture(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"]


# --- class paths -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,kwargs_key", [
    ("nonlin", "nonlin_kwargs"), ("norm_op", "norm_op_kwargs"), ("dropout_op", "dropout_op_kwargs"),
    ("conv_op", None),
])
def test_a_class_path_that_runs_a_command_is_refused_and_nothing_runs(tmp_path, tiny_model, key, kwargs_key):
    marker = tmp_path / "pwned"

    def edit(plans: dict[str, Any]) -> None:
        _kwargs(plans)[key] = "os.system"
        if kwargs_key:
            _kwargs(plans)[kwargs_key] = {"command": f"touch {marker}"}

    _edit_plans(tiny_model, edit)
    with pytest.raises(ModelFolderError) as err:
        load_model_folder(tiny_model)
    msg = str(err.value)
    assert f"key '{ARCH}.arch_kwargs.{key}'" in msg and "'os.system'" in msg and "plans.json" in msg
    assert "Do not export this model" in msg  # and says what to do
    # the builder refuses the same entry on its own (it is also called with architectures not read by
    # load_model_folder); before the fix this ran `touch` through nnU-Net's pydoc.locate + call
    with pytest.raises(ModelFolderError, match=f"arch_kwargs.{key}"):
        network_from_architecture(_architecture(tiny_model), 1, 4)
    assert not marker.exists()


def test_an_unknown_network_class_is_refused_without_being_imported(tmp_path, tiny_model, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "edgeseg_plans_payload.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Net:\n    def __init__(self, **kw):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _edit_plans(tiny_model, lambda p: _cfg(p)["architecture"].update(network_class_name="edgeseg_plans_payload.Net"))
    with pytest.raises(ModelFolderError, match=rf"key '{ARCH}\.network_class_name' names 'edgeseg_plans_payload"):
        load_model_folder(tiny_model)
    with pytest.raises(ModelFolderError, match="network_class_name"):
        network_from_architecture(_architecture(tiny_model), 1, 4)
    assert not marker.exists() and "edgeseg_plans_payload" not in sys.modules


def test_kw_requires_import_cannot_name_other_kwargs(tiny_model):
    def edit(plans: dict[str, Any]) -> None:
        _kwargs(plans)["block"] = "os.system"
        _cfg(plans)["architecture"]["_kw_requires_import"].append("block")

    _edit_plans(tiny_model, edit)
    with pytest.raises(ModelFolderError, match=rf"key '{ARCH}\._kw_requires_import' lists 'block'"):
        load_model_folder(tiny_model)


def test_inherited_architecture_is_named_where_it_is_written(tiny_model):
    def edit(plans: dict[str, Any]) -> None:
        configs = plans["configurations"]
        base = dict(configs["3d_fullres"])
        base["architecture"] = json.loads(json.dumps(base["architecture"]))
        base["architecture"]["arch_kwargs"]["nonlin"] = "subprocess.Popen"
        configs["3d_base"] = base
        configs["3d_fullres"] = {"inherits_from": "3d_base", "batch_size": 2}

    _edit_plans(tiny_model, edit)
    with pytest.raises(ModelFolderError,
                       match=r"key 'configurations\.3d_base\.architecture\.arch_kwargs\.nonlin' names 'subprocess"):
        load_model_folder(tiny_model)


def test_every_allowed_path_is_a_real_class():
    """The allow-lists hold no typo: each entry imports (first candidate that exists) as a class of its name."""
    import pydoc

    entries = [(k, v) for table in ALLOWED_CLASS_PATHS.values() for k, v in table.items()]
    entries += list(ALLOWED_NETWORK_CLASSES.items())
    for plans_name, candidates in entries:
        located = [c for c in (pydoc.locate(p) for p in candidates) if isinstance(c, type)]
        assert located and located[0].__name__ == plans_name.rsplit(".", 1)[1], plans_name


def test_the_class_paths_nnunet_writes_are_allowed():
    """nnU-Net's planners write ``cls.__module__ + '.' + cls.__name__`` and 'torch.nn.LeakyReLU'."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    def dotted(cls: type) -> str:
        return f"{cls.__module__}.{cls.__name__}"

    for cls in (PlainConvUNet, ResidualEncoderUNet):
        assert dotted(cls) in ALLOWED_NETWORK_CLASSES
    for dim in (1, 2, 3):
        assert dotted(getattr(torch.nn, f"Conv{dim}d")) in ALLOWED_CLASS_PATHS["conv_op"]
        assert dotted(getattr(torch.nn, f"InstanceNorm{dim}d")) in ALLOWED_CLASS_PATHS["norm_op"]
        assert dotted(getattr(torch.nn, f"BatchNorm{dim}d")) in ALLOWED_CLASS_PATHS["norm_op"]
        assert dotted(getattr(torch.nn, f"Dropout{dim}d")) in ALLOWED_CLASS_PATHS["dropout_op"]
    assert "torch.nn.LeakyReLU" in ALLOWED_CLASS_PATHS["nonlin"]


def test_old_residual_unet_path_builds_with_current_dynamic_network_architectures(tiny_model):
    """nnU-Net's pre-2.4 plans conversion names ``architectures.residual_unet.ResidualEncoderUNet``, which newer
    dynamic-network-architectures moved into ``unet``: the allow-listed fallback finds it there."""
    arch = _architecture(tiny_model)
    arch["network_class_name"] = "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"
    kwargs = arch["arch_kwargs"]
    kwargs["n_blocks_per_stage"] = kwargs.pop("n_conv_per_stage")
    net = network_from_architecture(arch, 1, 4)
    assert type(net).__name__ == "ResidualEncoderUNet"


def test_valid_plans_still_load_and_build(tiny_model):
    nets = load_fold_networks(load_model_folder(tiny_model))
    assert len(nets) == 1


# --- absurd values ---------------------------------------------------------------------------------------------

def _set_cfg(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda plans: _cfg(plans).__setitem__(key, value)


def _set_kw(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda plans: _kwargs(plans).__setitem__(key, value)


def _set_arch(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda plans: _cfg(plans)["architecture"].__setitem__(key, value)


P = "configurations.3d_fullres"


@pytest.mark.parametrize("edit,key,problem", [
    (_set_cfg("patch_size", [100000, 32, 32]), f"{P}.patch_size", "from 1 to 1024"),
    (_set_cfg("patch_size", [0, 32, 32]), f"{P}.patch_size", "whole number from 1"),
    (_set_cfg("patch_size", [-16, 32, 32]), f"{P}.patch_size", "whole number from 1"),
    (_set_cfg("patch_size", [16.5, 32, 32]), f"{P}.patch_size", "whole number"),
    (_set_cfg("patch_size", ["16", 32, 32]), f"{P}.patch_size", "whole number"),
    (_set_cfg("patch_size", [32, 32]), f"{P}.patch_size", "only 3-D configurations"),
    (_set_cfg("patch_size", [16, 32, 32, 32]), f"{P}.patch_size", "3 whole numbers"),
    (_set_cfg("patch_size", 128), f"{P}.patch_size", "3 whole numbers"),
    (_set_cfg("patch_size", [1024, 1024, 1024]), f"{P}.patch_size", "voxels per patch"),
    (_set_cfg("patch_size", [15, 32, 32]), f"{ARCH}.arch_kwargs.strides", "does not divide the patch edge 15"),
    (_set_cfg("spacing", [3.0, -1.0, 3.0]), f"{P}.spacing", "3 positive millimetre values"),
    (_set_cfg("spacing", [3.0, 3.0]), f"{P}.spacing", "3 positive"),
    (_set_cfg("normalization_schemes", "ZScoreNormalization"), f"{P}.normalization_schemes", "one str per"),
    (_set_arch("arch_kwargs", [1, 2]), f"{ARCH}.arch_kwargs", "not an object of keyword arguments"),
    (_set_cfg("architecture", "PlainConvUNet"), ARCH, "must be an object"),
    (_set_arch("network_class_name", 3), f"{ARCH}.network_class_name", "not a dotted class name"),
    (_set_kw("nonlin_kwargs", "inplace"), f"{ARCH}.arch_kwargs.nonlin_kwargs", "not an object of keyword"),
    (_set_kw("norm_op_kwargs", [1e-5]), f"{ARCH}.arch_kwargs.norm_op_kwargs", "not an object of keyword"),
    (_set_kw("nonlin", {"x": 1}), f"{ARCH}.arch_kwargs.nonlin", "not a dotted class name"),
    (_set_kw("n_stages", 1000), f"{ARCH}.arch_kwargs.n_stages", "from 1 to 12"),
    (_set_kw("n_stages", "3"), f"{ARCH}.arch_kwargs.n_stages", "whole number"),
    (_set_kw("features_per_stage", [8, 16]), f"{ARCH}.arch_kwargs.features_per_stage", "list of 3"),
    (_set_kw("features_per_stage", [8, 16, 10 ** 9]), f"{ARCH}.arch_kwargs.features_per_stage[2]", "from 1 to"),
    (_set_kw("kernel_sizes", [[3, 3], [3, 3], [3, 3]]), f"{ARCH}.arch_kwargs.kernel_sizes[0]", "one entry per axis"),
    (_set_kw("strides", [[1, 1, 1], [1, 2, 2], [0, 2, 2]]), f"{ARCH}.arch_kwargs.strides[2]", "from 1 to"),
    (_set_kw("n_conv_per_stage_decoder", [2, 2, 2]), f"{ARCH}.arch_kwargs.n_conv_per_stage_decoder",
     "list of 2"),
    (lambda p: _kwargs(p).pop("n_conv_per_stage"), f"{ARCH}.arch_kwargs.n_conv_per_stage", "is missing"),
    (lambda p: p.__setitem__("transpose_forward", [0, 0, 1]), "transpose_forward", "permutation"),
    (lambda p: p.__setitem__("transpose_forward", [2, 0, 1]), "transpose_backward", "not the inverse"),
    (lambda p: p.__setitem__("configurations", []), "configurations", "must be an object"),
])
def test_absurd_plans_values_are_refused_with_their_key_path(tiny_model, edit, key, problem):
    _edit_plans(tiny_model, edit)
    with pytest.raises(ModelFolderError) as err:
        load_model_folder(tiny_model)
    msg = str(err.value)
    assert f"key '{key}'" in msg and problem in msg, msg
    assert str(tiny_model / "plans.json") in msg and "Get the model folder" in msg


def test_old_format_plans_with_missing_keys_are_named(tiny_model):
    def edit(plans: dict[str, Any]) -> None:
        _cfg(plans).pop("architecture")
        _cfg(plans)["UNet_class_name"] = "PlainConvUNet"

    _edit_plans(tiny_model, edit)
    with pytest.raises(ModelFolderError, match=rf"key '{P}' is in the pre-2.4 plans format but malformed"):
        load_model_folder(tiny_model)


def test_check_architecture_without_a_patch_still_checks_sizes(tiny_model):
    arch = _architecture(tiny_model)
    arch["arch_kwargs"]["kernel_sizes"] = [[3, 3, 3], [3, 3, 3], [3, 3, -3]]
    with pytest.raises(ModelFolderError, match=r"key 'architecture\.arch_kwargs\.kernel_sizes\[2\]'"):
        check_architecture(arch, "plans")


# --- checkpoints ----------------------------------------------------------------------------------------------

class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_code_says_so_and_not_truncated(tmp_path, tiny_model):
    import numpy as np
    import torch

    marker = tmp_path / "pwned"
    ckpt = tiny_model / "fold_0" / "checkpoint_final.pth"
    data = torch.load(ckpt, weights_only=True)
    data["logging"] = {"lrs": [np.float64(0.01)], "note": _RunsACommand(marker)}  # numpy too: the retry path
    torch.save(data, ckpt)
    with pytest.raises(ModelFolderError) as err:
        load_checkpoint(ckpt)
    msg = str(err.value)
    assert "not allowed" in msg and "GLOBAL" in msg and "system" in msg and "weights_only=True" in msg
    assert "truncated" not in msg and "copy the model again" not in msg
    assert "Re-running" not in msg  # torch's advice to load it with weights_only=False is not passed on
    assert "Get the model again from its publisher" in msg
    assert not marker.exists()


def test_truncated_checkpoint_says_truncated_not_code(tiny_model):
    ckpt = tiny_model / "fold_0" / "checkpoint_final.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ModelFolderError) as err:
        load_checkpoint(ckpt)
    msg = str(err.value)
    assert "truncated" in msg and "not allowed" not in msg


def test_checkpoint_with_numpy_scalars_in_its_log_still_loads(tiny_model):
    import numpy as np
    import torch

    ckpt = tiny_model / "fold_0" / "checkpoint_final.pth"
    data = torch.load(ckpt, weights_only=True)
    data["logging"] = {"lrs": [np.float64(0.01), np.float32(0.5)], "epoch": np.int64(3)}
    torch.save(data, ckpt)
    assert float(load_checkpoint(ckpt)["logging"]["lrs"][0]) == 0.01
