"""The fidelity gate's verdict (export/gate.py) from validation rows: every structure in every series and contrast
at least ``min_dice``, every row's mean at least ``mean_dice``; the figures that failed it are named."""
from __future__ import annotations

from edgeseg.export.gate import Gate, judge


def _row(precision: str, contrast: str, dice: dict[str, float | None], volume: dict[str, float | None] | None = None):
    return {"variant": "1.5mm", "series": "mri", "contrast": contrast, "precision": precision,
            "per_class_dice_vs_fp32": dice, "per_class_volume_diff_pct": volume or {}}


def test_a_precision_passes_only_when_every_structure_and_every_mean_does() -> None:
    good = {"liver": 0.999, "spleen": 0.995, "absent": None}
    rows = [_row("int8", "original", good), _row("int8", "inverted", {**good, "spleen": 0.96},
                                                 {"spleen": -3.5, "liver": 0.1})]
    verdict = judge(rows, "int8", Gate())
    assert verdict["verdict"] == "failed"  # (0.999 + 0.96) / 2 < 0.99 in the inverted contrast
    assert verdict["min_dice"] == 0.96 and verdict["worst"]["structure"] == "spleen"
    assert verdict["worst"]["contrast"] == "inverted" and verdict["max_abs_volume_diff_pct"] == 3.5
    assert any("mean Dice 0.9795 < 0.99 (1.5mm/mri/inverted)" in f for f in verdict["failures"])
    assert verdict["per_structure_min_dice"] == {"liver": 0.999, "spleen": 0.96}
    assert judge(rows, "int8", Gate(min_dice=0.95, mean_dice=0.97))["verdict"] == "passed"
    one_bad = [_row("int8", "original", {"liver": 1.0, "a": 1.0, "b": 1.0, "c": 1.0, "tiny": 0.5})]
    assert judge(one_bad, "int8", Gate(mean_dice=0.5))["verdict"] == "failed"  # one structure below 0.95
    assert judge(rows, "fp16", Gate())["verdict"] == "unchecked"  # no rows for it
    assert judge(rows, "int8", Gate(), remedy="float_layers")["remedy"] == "float_layers"
