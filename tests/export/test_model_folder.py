"""Loading nnU-Net v2 results folders: folder, dataset folder, zip, several parts, and every wrong input."""
from __future__ import annotations

import json
import shutil
import zipfile

import pytest

from edgeseg.errors import ModelFolderError
from edgeseg.export.model_folder import extract_release_zip, load_model_folder, open_model
from edgeseg.export.network import build_network, load_checkpoint, load_fold_networks, mirroring_axes_from_checkpoint
from helpers.testmodels._nnunet_folder import make_release_zip
from helpers.tiny_models import make_tiny_model

LABELS = {1: "liver", 2: "spleen"}


def test_loads_trainer_folder_and_its_parent(tmp_path, tiny_model):
    m = load_model_folder(tiny_model)
    assert (m.trainer, m.plans_name, m.configuration_name) == ("nnUNetTrainerNoMirroring", "nnUNetPlans", "3d_fullres")
    assert m.num_outputs == 4 and m.num_input_channels == 1
    assert m.foreground_labels == {1: "liver", 2: "spleen", 3: "kidney_left"}
    assert list(m.checkpoints) == ["0"]
    assert load_model_folder(tiny_model.parent).path == tiny_model  # Dataset901_Tiny/ holds one trainer folder


def test_several_folds_are_found_and_selectable(tmp_path):
    folder = make_tiny_model(tmp_path, "Dataset902_Folds", LABELS, folds=(0, 1, 2))
    assert list(load_model_folder(folder).checkpoints) == ["0", "1", "2"]
    assert list(load_model_folder(folder, folds=[1]).checkpoints) == ["1"]
    with pytest.raises(ModelFolderError, match=r"fold 4 has no checkpoint_final.pth \(folds present: 0, 1, 2\)"):
        load_model_folder(folder, folds=[4])


def test_release_zip_and_multi_part_root(tmp_path):
    a = make_tiny_model(tmp_path / "r", "Dataset850_TotalSegMRI_part1_organs_1088subj", LABELS,
                        trainer="nnUNetTrainer_2000epochs_NoMirroring")
    b = make_tiny_model(tmp_path / "r", "Dataset851_TotalSegMRI_part2_muscles_1088subj", {1: "femur_left"},
                        trainer="nnUNetTrainer_2000epochs_NoMirroring")
    parts = open_model(tmp_path / "r")
    assert [p.dataset_name for p in parts] == [a.parent.name, b.parent.name]
    z = make_release_zip(a, tmp_path / "part1.zip")
    [from_zip] = open_model(z, workdir=tmp_path)
    assert from_zip.dataset_name == a.parent.name and from_zip.trainer == "nnUNetTrainer_2000epochs_NoMirroring"


@pytest.mark.parametrize("remove,message", [
    ("plans.json", "has no plans.json"),
    ("dataset.json", "has no dataset.json"),
    ("fold_0", "has no fold_N folders"),
])
def test_missing_pieces_are_named(tiny_model, remove, message):
    target = tiny_model / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelFolderError, match=message):
        load_model_folder(tiny_model)


def test_wrong_zips_are_refused(tmp_path):
    not_zip = tmp_path / "model.zip"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(ModelFolderError, match="is not a zip file"):
        extract_release_zip(not_zip)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelFolderError, match="holds no plans.json"):
        open_model(empty, workdir=tmp_path)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("x/plans.json", "{}")
        zf.writestr("../../escape.txt", "gotcha")
    with pytest.raises(ModelFolderError, match="unsafe path"):
        extract_release_zip(evil, tmp_path / "out")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_missing_path_and_bad_json(tmp_path, tiny_model):
    with pytest.raises(ModelFolderError, match="does not exist"):
        open_model(tmp_path / "nope")
    (tiny_model / "plans.json").write_text("{ not json")
    with pytest.raises(ModelFolderError, match="not readable JSON"):
        load_model_folder(tiny_model)


def test_checkpoint_not_matching_plans_is_refused_with_keys(tmp_path, tiny_model):
    ds = json.loads((tiny_model / "dataset.json").read_text())
    ds["labels"]["aorta"] = 4  # one more output than the checkpoint was trained with
    (tiny_model / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(ModelFolderError, match="does not match the network"):
        load_fold_networks(load_model_folder(tiny_model))


def test_truncated_checkpoint_is_refused(tiny_model):
    ckpt = tiny_model / "fold_0" / "checkpoint_final.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ModelFolderError, match="Cannot load checkpoint"):
        load_checkpoint(ckpt)


def test_checkpoint_with_pickled_code_is_refused(tmp_path, tiny_model):
    import torch

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    ckpt = tiny_model / "fold_0" / "checkpoint_final.pth"
    data = torch.load(ckpt, weights_only=True)
    data["logging"] = Evil()
    torch.save(data, ckpt)
    with pytest.raises(ModelFolderError, match="never unpickles arbitrary objects"):
        load_checkpoint(ckpt)


def test_network_built_from_plans_loads_strictly_and_nomirroring_is_read(tiny_model):
    model = load_model_folder(tiny_model)
    nets = load_fold_networks(model)
    assert len(nets) == 1 and not nets[0].training
    assert mirroring_axes_from_checkpoint(model) is None  # *NoMirroring trainer
    assert sum(p.numel() for p in build_network(model).parameters()) > 0


def test_old_plans_format_is_converted(tiny_model):
    plans = json.loads((tiny_model / "plans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg.pop("architecture")["arch_kwargs"]
    cfg.update({"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 8, "unet_max_num_features": 32,
                "n_conv_per_stage_encoder": arch["n_conv_per_stage"],
                "n_conv_per_stage_decoder": arch["n_conv_per_stage_decoder"], "num_pool_per_axis": [1, 2, 2],
                "pool_op_kernel_sizes": arch["strides"], "conv_kernel_sizes": arch["kernel_sizes"]})
    (tiny_model / "plans.json").write_text(json.dumps(plans))
    model = load_model_folder(tiny_model)
    assert model.configuration["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32]
    load_fold_networks(model)  # the converted architecture loads the same weights strictly


def test_region_based_models_are_refused(tiny_model):
    ds = json.loads((tiny_model / "dataset.json").read_text())
    ds["labels"]["whole"] = [1, 2]
    (tiny_model / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(ModelFolderError, match="region-based"):
        load_model_folder(tiny_model)
