"""Provenance in every object (issue 19): the SEG's and SR's SeriesDescription name the bundle (name and version)
and the precision; a bundle marked not for clinical use (the demo) says so there and in the SEG's content label and
description; series numbers differ between results of different models/precisions; the manifest records the
precision verdict. And ``auto`` runs only precisions export's gate passed: never a failed one, nor one a bundle
written before the gate has no verdict for."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pydicom
import pytest

from edgeseg.cli import main
from edgeseg.demo import demo_bundle_path

pytestmark = pytest.mark.slow


def _objects(out: Path) -> tuple[pydicom.Dataset, pydicom.Dataset, dict]:
    (folder,) = [p for p in out.iterdir() if p.name.endswith(".edgeseg")]
    seg = pydicom.dcmread(folder / "seg.dcm", stop_before_pixels=True)
    sr = pydicom.dcmread(folder / "sr.dcm")
    manifest = json.loads((folder / "manifest.json").read_text())
    return seg, sr, manifest


def _failed_int8_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle_path(), bundle)
    data = json.loads((bundle / "bundle.json").read_text())
    data["precision_verdicts"]["int8"].update(verdict="failed", min_dice=0.0, mean_dice=0.82,
                                             worst={"structure": "adrenal_gland_left"})
    data["name"], data["version"] = "stand-in", ""
    data["not_for_clinical_use"] = False
    (bundle / "bundle.json").write_text(json.dumps(data))
    return bundle


def test_demo_results_name_model_precision_and_not_for_clinical_use(tmp_path: Path, demo_series: list[Path]) -> None:
    inp = tmp_path / "in"
    shutil.copytree(demo_series[0].parent, inp)
    outs = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / f"out-{precision}"
        assert main(["-q", "run", "--input", str(inp), "--output", str(out), "--bundle", "demo", "--precision",
                     precision, "--layout", "folders"]) == 0
        outs[precision] = _objects(out)
    seg, sr, manifest = outs["fp32"]
    assert seg.SeriesDescription == "SEG edgeseg-demo-total_mr-3mm v1 FP32 NOT FOR CLINICAL USE"
    assert sr.SeriesDescription == "SR edgeseg-demo-total_mr-3mm v1 FP32 NOT FOR CLINICAL USE"
    assert seg.ContentLabel == "NOT_FOR_CLINICAL" and "NOT FOR CLINICAL USE" in seg.ContentDescription
    assert outs["int8"][0].SeriesDescription == "SEG edgeseg-demo-total_mr-3mm v1 INT8 NOT FOR CLINICAL USE"
    numbers = {o.SeriesNumber for s, r, _ in outs.values() for o in (s, r)}
    assert len(numbers) == 4  # SEG and SR of two runs with different precisions: four distinct series numbers
    assert manifest["bundle"]["not_for_clinical_use"] is True and manifest["bundle"]["version"] == "1"
    assert manifest["bundle"]["precision_verdicts"] == {"int8": "passed"}
    assert outs["int8"][2]["run"]["parts"][0]["precision_verdict"] == "passed"


def test_auto_never_runs_a_failed_precision_and_an_explicit_request_warns(
        tmp_path: Path, demo_series: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    from edgeseg.bundle.schema import load_bundle
    from edgeseg.runtime.infer.engine import compile_part

    bundle = load_bundle(_failed_int8_bundle(tmp_path))
    assert bundle.verdict("int8") == "failed" and bundle.verdict("fp32") == "passed"
    part = bundle.variant().parts[0]
    auto = compile_part(bundle, part, "CPU", "auto")
    # FP32 in FP32: BF16 inference was not validated by this bundle's export ("unchecked"), so auto leaves it out too
    assert auto.precision == "fp32+f32" and auto.verdict == "passed"
    with caplog.at_level(logging.WARNING):
        explicit = compile_part(bundle, part, "CPU", "int8")
    assert explicit.precision.startswith("int8") and explicit.verdict == "failed"
    assert any(r.levelno == logging.WARNING and "marked it failed" in r.getMessage() and "adrenal_gland_left"
               in r.getMessage() for r in caplog.records)
    # the run manifest marks it, and the SEG names the precision it was made with
    inp = tmp_path / "in"
    shutil.copytree(demo_series[0].parent, inp)
    assert main(["-q", "run", "--input", str(inp), "--output", str(tmp_path / "out"), "--bundle",
                 str(bundle.path), "--precision", "int8", "--layout", "folders"]) == 0
    seg, sr, manifest = _objects(tmp_path / "out")
    assert manifest["run"]["parts"][0]["precision_verdict"] == "failed"
    assert seg.SeriesDescription.startswith("SEG stand-in sha ") and seg.SeriesDescription.endswith(" INT8")
    assert seg.ContentLabel == "EDGESEG"


def _old_bundle(tmp_path: Path) -> Path:
    """The demo bundle as every bundle written before the fidelity gate is: no precision_verdicts."""
    bundle = tmp_path / "old-bundle"
    shutil.copytree(demo_bundle_path(), bundle)
    data = json.loads((bundle / "bundle.json").read_text())
    data.pop("precision_verdicts")
    data["name"], data["not_for_clinical_use"] = "old", False
    (bundle / "bundle.json").write_text(json.dumps(data))
    return bundle


def test_auto_leaves_out_an_unchecked_precision_with_one_line_and_an_explicit_request_warns(
        tmp_path: Path, demo_series: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    """A bundle without verdicts (exported before the gate): auto runs FP32 and says once, at WARNING, that the
    bundle predates the gate and how to re-export; ``int8`` asked for by name runs with a WARNING and the manifest
    marks it unchecked."""
    from edgeseg.bundle.schema import load_bundle
    from edgeseg.runtime.infer.engine import compile_part

    bundle = load_bundle(_old_bundle(tmp_path))
    assert bundle.verdict("int8") == "unchecked" and "int8" in bundle.variant().parts[0].models
    part = bundle.variant().parts[0]
    with caplog.at_level(logging.INFO):
        first = compile_part(bundle, part, "CPU", "auto")
        again = compile_part(bundle, part, "CPU", "auto")
    assert first.precision == again.precision == "fp32+f32" and first.verdict == "passed"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # once per bundle, not per compile
    assert "predates export's fidelity gate" in warnings[0] and "int8+" in warnings[0]
    assert "re-export the bundle" in warnings[0] and "edgeseg export" in warnings[0]
    assert any(r.levelno == logging.INFO and "no fidelity verdict" in r.getMessage() for r in caplog.records)
    assert "int8 unchecked (no fidelity verdict: bundle written before export's fidelity gate; re-export it)" \
        in bundle.describe_precisions()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        explicit = compile_part(bundle, part, "CPU", "int8")
    assert explicit.precision.startswith("int8") and explicit.verdict == "unchecked"
    assert any(r.levelno == logging.WARNING and "carries no fidelity verdict" in r.getMessage()
               and "written before export's fidelity gate" in r.getMessage() for r in caplog.records)
    inp = tmp_path / "in"
    shutil.copytree(demo_series[0].parent, inp)
    for precision in ("auto", "int8"):
        assert main(["-q", "run", "--input", str(inp), "--output", str(tmp_path / precision), "--bundle",
                     str(bundle.path), "--precision", precision, "--layout", "folders"]) == 0
    assert _objects(tmp_path / "auto")[2]["run"]["parts"][0]["precision"] == "fp32+f32"
    seg, _, manifest = _objects(tmp_path / "int8")
    assert manifest["run"]["parts"][0]["precision_verdict"] == "unchecked"
    assert seg.SeriesDescription.endswith(" INT8")
