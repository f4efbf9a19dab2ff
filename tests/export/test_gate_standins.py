"""The fidelity gate on the 1.5 mm two-part stand-ins (issue 19: INT8 mean Dice 0.78-0.79 against
TotalSegmentator, one structure 0.0, exported with exit 0 and chosen by ``auto``).

Both branches, each a real export of the stand-ins (tests/helpers/totalseg_reference.py) validated on the real MRI:

* at the default gate (every structure >= 0.95, every mean >= 0.99) INT8 fails and so do the remedies (the
  stand-ins' logit margins are small: even BF16 flips a few voxels of the smallest structures): bundle.json marks
  INT8 failed with its figures and the remedies tried, and ``auto`` runs FP32 (BF16 only where BF16 passed);
* with a gate the sensitivity-ranked float layers can meet (mean >= 0.845: the as-quantized INT8 gives 0.822 and
  the 2 most sensitive operations of each part in float 0.846 here, docs/benchmarks.md), the remedy's INT8
  replaces the first one and its verdict names the remedy and the layers and keeps the as-quantized figures;
  ``auto`` then runs INT8.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeseg.bundle.schema import load_bundle
from edgeseg.export.gate import Gate
from edgeseg.export.pipeline import ExportSettings, VariantSpec, export_bundle
from edgeseg.runtime.infer.engine import compile_part

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LABELS = REPO / "edgeseg" / "demo" / "mri" / "total_mr_labels.json"
PARTS = REPO / "tests" / "fixtures" / "total_mr_example" / "total_mr_parts.json"


@pytest.fixture(scope="module")
def standins(tmp_path_factory, small_model, real_mri) -> tuple[tuple[Path, Path], Path]:
    from helpers.totalseg_reference import install_standins

    root = tmp_path_factory.mktemp("standins")
    models = install_standins(root / "home", small_model, PARTS)
    calibration = root / "calibration"
    calibration.mkdir()
    shutil.copy(real_mri, calibration / real_mri.name)
    return (models["850"], models["851"]), calibration


def _export(standins, out: Path, gate: Gate, remedies: tuple[str, ...]):
    parts, calibration = standins
    return export_bundle([VariantSpec("1.5mm", parts)], out, calibration,
                         ExportSettings(precisions=("fp32", "int8"), totalseg=True, labels_file=LABELS, gate=gate,
                                        remedies=remedies, remedy_time_s=600, time_budget_s=None,
                                        validation_contrasts=("original",), torch_check_patches=1,
                                        latency_repeats=1))


def test_int8_that_fails_the_gate_is_marked_failed_and_auto_runs_fp32(standins, tmp_path: Path) -> None:
    bundle = _export(standins, tmp_path / "bundle", Gate(), ("float_layers", "bf16"))
    verdict = bundle.precision_verdicts["int8"]
    assert verdict["verdict"] == "failed" and verdict["min_dice"] < 0.95 and verdict["mean_dice"] < 0.99
    assert verdict["worst"]["structure"] in bundle.labels.values() and verdict["per_structure_min_dice"]
    tried = {t["remedy"].split(" (")[0]: t["verdict"] for t in verdict["remedies_tried"]}
    assert tried["float_layers"] == "failed" and "bf16" in tried
    raw = json.loads((bundle.path / "bundle.json").read_text())
    assert raw["precision_verdicts"]["int8"]["verdict"] == "failed"  # in the file, with its figures
    loaded = load_bundle(bundle.path)  # the restored as-quantized INT8 files verify
    bf16_passed = loaded.verdict("bf16") == "passed"
    for part in loaded.variant().parts:
        engine = compile_part(loaded, part, "CPU", "auto")
        assert engine.precision in (("fp32+bf16", "fp32+f32") if bf16_passed else ("fp32+f32",))
    assert "int8 FAILED" in loaded.describe_precisions()


def test_int8_that_passes_after_a_remedy_ships_with_the_remedy_named(standins, tmp_path: Path) -> None:
    bundle = _export(standins, tmp_path / "bundle", Gate(min_dice=0.0, mean_dice=0.845), ("float_layers",))
    verdict = bundle.precision_verdicts["int8"]
    assert verdict["verdict"] == "passed", verdict.get("remedies_tried")
    assert verdict["remedy"].startswith("float_layers") and verdict["mean_dice"] >= 0.845
    assert all(kept for kept in verdict["kept_in_float"].values())
    assert verdict["failed_as_quantized"]["mean_dice"] < 0.845
    report = json.loads((bundle.path / "validation.json").read_text())
    assert report["segmentation_vs_fp32_before_remedy"] and report["remedies_tried"][-1]["verdict"] == "passed"
    loaded = load_bundle(bundle.path)
    for part in loaded.variant().parts:
        assert compile_part(loaded, part, "CPU", "auto").precision.startswith("int8")
