"""The fidelity gate's remedies on a tiny random-weights model (its INT8 fails the default gate: random logits have
small margins): the export's time budget (export/budget.py) and the per-layer sensitivity pass
(export/sensitivity.py) behind the ``float_layers`` remedy."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from edgeseg.bundle.schema import load_bundle
from edgeseg.export import pipeline
from edgeseg.export.budget import BudgetSpent
from edgeseg.export.gate import Gate
from edgeseg.export.pipeline import ExportSettings, VariantSpec, export_bundle

SMALL = dict(validation_contrasts=("original",), torch_check_patches=1, latency_repeats=1)


def _export(model: Path, calibration: Path, out: Path, **settings: Any):
    return export_bundle([VariantSpec("default", (model,))], out, calibration,
                         ExportSettings(**{**SMALL, **settings}))


def test_remedies_get_only_what_is_left_of_the_export_budget(tiny_model, calibration_dir, tmp_path, caplog) -> None:
    """A budget the base export alone overruns: the base export finishes, no remedy starts, each is recorded as
    not tried with the budget that stopped it, and INT8 is marked failed. Export's own validation of a precision
    does not trip the runtime's warning about a precision without a verdict."""
    import logging

    with caplog.at_level(logging.WARNING):
        bundle = _export(tiny_model, calibration_dir, tmp_path / "b", time_budget_s=0.5)
    assert not [r for r in caplog.records if r.name.startswith("edgeseg.runtime")], caplog.text
    verdict = bundle.precision_verdicts["int8"]
    assert verdict["verdict"] == "failed"
    tried = verdict["remedies_tried"]
    assert [t["remedy"] for t in tried] == ["accuracy_control", "float_layers", "bf16"]
    assert all(t["verdict"] == "not tried" for t in tried)
    assert "the export's time budget (0.5 s; the base export took" in tried[0]["reason"]
    report = json.loads((bundle.path / "validation.json").read_text())
    assert report["time_budget"]["base_export_s"] > 0.5 and report["remedies_s"] < 1.0
    assert load_bundle(bundle.path, verify=True).verdict("bf16") == "unchecked"


class _ExpiresAtCheck:
    """A deadline that passes at its n-th check (what a remedy overtaken by the budget sees), with plenty of time
    left before that."""

    what = "the test's budget"

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def left(self) -> float:
        return 0.0 if self.calls >= self.n else 1e6

    def check(self, where: str = "") -> None:
        self.calls += 1
        if self.calls >= self.n:
            raise BudgetSpent(f"{self.what} ran out during {where}")


@pytest.mark.parametrize("remedies, stopped_in", [
    (("accuracy_control", "bf16"), "accuracy_control"),
    (("float_layers", "bf16"), "float_layers"),
    (("bf16",), "bf16"),
])
def test_a_remedy_the_deadline_overtakes_is_stopped_and_int8_stays_as_quantized(
        tiny_model, calibration_dir, tmp_path, monkeypatch, remedies, stopped_in) -> None:
    from edgeseg.runtime.infer.engine import _supports_bf16

    deadline = _ExpiresAtCheck(3)
    monkeypatch.setattr(pipeline, "remedy_deadline", lambda *a: deadline)
    base = _export(tiny_model, calibration_dir, tmp_path / "base", remedies=())
    bundle = _export(tiny_model, calibration_dir, tmp_path / "b", remedies=remedies)
    verdict = bundle.precision_verdicts["int8"]
    first, *rest = verdict["remedies_tried"]
    if remedies == ("bf16",) and not _supports_bf16("CPU"):
        # a CPU without BF16 (an AVX2-only AMD EPYC) has nothing to validate: not tried, before any deadline check
        assert verdict["verdict"] == "failed" and deadline.calls == 0
        assert first == {"remedy": "bf16", "verdict": "not tried", "reason": "this CPU has no BF16"} and not rest
        assert "bf16" not in load_bundle(bundle.path, verify=True).precision_verdicts
        return
    assert verdict["verdict"] == "failed" and deadline.calls >= 3
    assert first["remedy"].startswith(stopped_in) and first["verdict"] == "stopped"
    assert "the test's budget ran out during" in first["reason"]
    assert all(t["verdict"] == "not tried" and "was spent" in t["reason"] for t in rest)
    loaded = load_bundle(bundle.path, verify=True)  # the files it names are there, as hashed
    assert "bf16" not in loaded.precision_verdicts  # a stopped BF16 validation leaves no verdict
    # the INT8 model is the one first quantized (the same as an export without remedies makes)
    part, base_part = loaded.variant().parts[0], base.variant().parts[0]
    assert loaded.files[part.models["int8"].bin] == base.files[base_part.models["int8"].bin]


def test_the_sensitivity_ranking_is_deterministic_and_names_the_models_layers(tiny_model, calibration_dir,
                                                                              tmp_path) -> None:
    from edgeseg.export.calibration import calibration_patches, find_series
    from edgeseg.export.sensitivity import QUANTIZED_TYPES, quantized_operations, rank_layers
    from edgeseg.runtime.infer.engine import core

    bundle = _export(tiny_model, calibration_dir, tmp_path / "b", remedies=())
    variant = bundle.variant()
    part = variant.parts[0]
    fp32 = core().read_model(str(bundle.model_path(part, "fp32")))
    int8 = core().read_model(str(bundle.model_path(part, "int8")))
    patches = calibration_patches(find_series(calibration_dir), variant, part, 3, seed=3)
    first = rank_layers(fp32, int8, patches)
    again = rank_layers(fp32, int8, patches)
    assert [s.to_dict() for s in first] == [s.to_dict() for s in again]
    names = {op.get_friendly_name(): op.get_type_name() for op in fp32.get_ops()}
    assert {s.name for s in first} == {op.get_friendly_name() for op in quantized_operations(int8)}
    assert len(first) >= 10 and all(names.get(s.name) == s.type in QUANTIZED_TYPES for s in first)
    assert {"Convolution", "MVN"} <= {s.type for s in first}
    assert [s.added_noise for s in first] == sorted((s.added_noise for s in first), reverse=True)
    assert all(s.drop_db == pytest.approx(s.sqnr_in_db - s.sqnr_out_db, abs=2e-3) for s in first)
    assert any(s.sqnr_in_db == 60.0 for s in first)  # the first convolution reads the clean input


def test_the_float_layers_remedy_keeps_the_most_sensitive_layers_and_records_them(tiny_model, calibration_dir,
                                                                                   tmp_path) -> None:
    """Without a pass: each step k = 1, 2, 4 ... keeps the top k of the recorded ranking in float. Then, with a
    gate between the as-quantized INT8 and the best step, the remedy passes and the verdict names the layers."""
    failed = _export(tiny_model, calibration_dir, tmp_path / "failed", remedies=("float_layers",))
    verdict = failed.precision_verdicts["int8"]
    steps = verdict["remedies_tried"]
    report = json.loads((failed.path / "validation.json").read_text())
    (ranking,) = report["sensitivity"]["ranking"].values()
    # every layer is placed by names of the ONNX graph or the torch parameters, none by OpenVINO's per-process
    # counters ("MVN_183", "ConvolutionBackpropData_335": a transposed convolution is named by its weights)
    assert not [r for r in ranking if re.fullmatch(r"(after )?[A-Za-z]+_\d+", r["where"])]
    assert all(r["where"] == r["name"] or r["where"].startswith("after ") or r["type"] == "ConvolutionBackpropData"
               for r in ranking)
    assert [len(next(iter(s["kept_in_float"].values()))) for s in steps] == [2 ** i for i in range(len(steps))]
    for step in steps:
        (kept,) = step["kept_in_float"].values()
        assert kept == ranking[:len(kept)] and step["verdict"] == "failed"
    best = max(s["mean_dice"] for s in steps)
    assert best > verdict["mean_dice"]  # keeping layers in float helps
    gate = Gate(min_dice=0.0, mean_dice=round((best + verdict["mean_dice"]) / 2, 6))
    passed = _export(tiny_model, calibration_dir, tmp_path / "passed", remedies=("float_layers",), gate=gate)
    verdict = passed.precision_verdicts["int8"]
    assert verdict["verdict"] == "passed" and verdict["remedy"].startswith("float_layers (")
    (kept,) = verdict["kept_in_float"].values()
    # the same layers (an MVN's OpenVINO name is a per-process counter: compared by where it is)
    assert kept and [{**k, "name": ""} for k in kept] == [{**r, "name": ""} for r in ranking[:len(kept)]]
    assert verdict["failed_as_quantized"]["mean_dice"] < gate.mean_dice
    raw = json.loads((passed.path / "bundle.json").read_text())
    assert raw["precision_verdicts"]["int8"]["kept_in_float"] == verdict["kept_in_float"]


def test_a_transposed_convolution_is_placed_by_its_onnx_or_torch_name(tmp_path) -> None:
    """OpenVINO names a ConvTranspose's ConvolutionBackpropData by a per-process counter: the sensitivity report
    places it by its bias Add (the ONNX node's name) or, without a bias, by its weights (the torch parameter), and
    an MVN after it by the same name."""
    import openvino as ov
    import torch

    from edgeseg.export.sensitivity import _where

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.biased = torch.nn.ConvTranspose3d(1, 2, 2, stride=2)
            self.plain = torch.nn.ConvTranspose3d(2, 2, 2, stride=2, bias=False)
            self.norm = torch.nn.InstanceNorm3d(2, affine=True)
            self.out = torch.nn.Conv3d(2, 1, 1)

        def forward(self, x):
            return self.out(self.norm(self.plain(self.biased(x))))

    path = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), torch.zeros(1, 1, 4, 4, 4), str(path), dynamo=False)
    model = ov.Core().read_model(str(path))
    ops = model.get_ordered_ops()
    biased, plain = [op for op in ops if op.get_type_name() == "ConvolutionBackpropData"]
    assert re.fullmatch(r"ConvolutionBackpropData_\d+", biased.get_friendly_name())  # the name went to its Add
    # without a bias the frontend names it after the ONNX node, but the nnU-Net models' IRs hold counters there
    # too ("ConvolutionBackpropData_615950" in the tiny model's fp32.xml): as they do
    plain.set_friendly_name("ConvolutionBackpropData_77")
    assert [_where(op) for op in (biased, plain)] == ["/biased/ConvTranspose", "plain.weight"]
    (mvn,) = [op for op in ops if op.get_type_name() == "MVN"]
    assert _where(mvn) == "after plain.weight"
