"""The fidelity gate a reduced precision (INT8, FP16, BF16) must pass against FP32 before a bundle may offer it.

Export's validation segments every validation series in every contrast with FP32 and with each reduced precision
through the full runtime (``pipeline._validate``); each row holds the Dice of every structure against FP32 and its
volume difference. :func:`judge` turns the rows of one precision into its verdict, written into bundle.json's
``precision_verdicts`` (:mod:`edgeseg.bundle.schema`): "passed" when every structure's Dice is at least
``Gate.min_dice`` in every series and contrast and every row's mean over structures is at least ``Gate.mean_dice``;
else "failed" with the figures that failed it. The runtime's ``auto`` never chooses a failed precision.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Gate:
    """Thresholds (``edgeseg export --gate-min-dice/--gate-mean-dice``), Dice against FP32."""

    #: every structure, in every validation series and contrast
    min_dice: float = 0.95
    #: the mean over structures, in every validation series and contrast
    mean_dice: float = 0.99


def judge(rows: Iterable[Mapping[str, Any]], precision: str, gate: Gate, remedy: str | None = None) -> dict[str, Any]:
    """The verdict record of ``precision`` from validation ``rows`` (each: ``precision``, ``variant``, ``series``,
    ``contrast``, ``per_class_dice_vs_fp32`` {structure: Dice or None}, optionally ``per_class_volume_diff_pct``).
    No row for the precision: "unchecked"."""
    mine = [r for r in rows if r.get("precision") == precision]
    if not mine:
        return {"verdict": "unchecked", "remedy": remedy, "gate": asdict(gate)}
    worst: dict[str, Any] = {}
    min_dice, worst_mean = 1.0, 1.0
    per_structure: dict[str, float] = {}
    max_volume = 0.0
    failures: list[str] = []
    for r in mine:
        where = f"{r.get('variant')}/{r.get('series')}/{r.get('contrast')}"
        present = {k: float(v) for k, v in (r.get("per_class_dice_vs_fp32") or {}).items() if v is not None}
        for name, d in present.items():
            per_structure[name] = min(per_structure.get(name, 1.0), d)
            if d < min_dice:
                min_dice = d
                worst = {"structure": name, "variant": r.get("variant"), "series": r.get("series"),
                         "contrast": r.get("contrast"), "dice": round(d, 6)}
            if d < gate.min_dice:
                failures.append(f"{name} Dice {d:.4f} < {gate.min_dice} ({where})")
        mean = sum(present.values()) / len(present) if present else 1.0
        worst_mean = min(worst_mean, mean)
        if mean < gate.mean_dice:
            failures.append(f"mean Dice {mean:.4f} < {gate.mean_dice} ({where})")
        for v in (r.get("per_class_volume_diff_pct") or {}).values():
            if v is not None:
                max_volume = max(max_volume, abs(float(v)))
    return {
        "verdict": "failed" if failures else "passed",
        "remedy": remedy,
        "gate": asdict(gate),
        "min_dice": round(min_dice, 6),
        "mean_dice": round(worst_mean, 6),
        "worst": worst,
        "max_abs_volume_diff_pct": round(max_volume, 3),
        "per_structure_min_dice": {k: round(v, 6) for k, v in sorted(per_structure.items())},
        "rows": len(mine),
        "failures": failures[:20],
    }
