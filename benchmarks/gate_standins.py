"""The fidelity gate on the 1.5 mm two-part stand-ins (issue 19): export them (INT8, the remedies in the order
given) and print INT8/BF16 vs FP32 Dice per structure, seconds per tile per precision, the verdicts, the remedies
tried and the export's wall time and peak memory.

    flock /tmp/edgeseg-bench.lock nice -n 1 python benchmarks/gate_standins.py --work /tmp/edgeseg-gate \\
        [--remedies accuracy_control,float_layers,bf16] [--remedy-time 300] [--contrasts original,inverted]

The stand-ins (tests/helpers/totalseg_reference.py): the committed demo network cut into TotalSegmentator's two
total_mr part models, planned at 1.5 mm; validated on the real MRI.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "tests"))
from _common import machine, peak_rss_mb, print_table, write_json  # noqa: E402

MRI = REPO / "edgeseg" / "demo" / "mri" / "example_mr_sm.nii.gz"
LABELS = REPO / "edgeseg" / "demo" / "mri" / "total_mr_labels.json"
PARTS = REPO / "tests" / "fixtures" / "total_mr_example" / "total_mr_parts.json"
DEMO_MODEL = next((REPO / "tests" / "fixtures" / "models" / "Dataset900_EdgesegDemoMR").glob("*__3d_fullres"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/edgeseg-gate"))
    p.add_argument("--remedies", default="accuracy_control,float_layers,bf16")
    p.add_argument("--remedy-time", type=float, default=300.0)
    p.add_argument("--time-budget", type=float, default=900.0, help="edgeseg export --time-budget (0: none)")
    p.add_argument("--contrasts", default="original,inverted,gamma0.5,gamma2")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edgeseg.export.gate import Gate
    from edgeseg.export.pipeline import ExportSettings, VariantSpec, export_bundle
    from helpers.totalseg_reference import install_standins

    shutil.rmtree(args.work, ignore_errors=True)
    models = install_standins(args.work / "home", DEMO_MODEL, PARTS)
    calibration = args.work / "calibration"
    calibration.mkdir()
    shutil.copy(MRI, calibration / MRI.name)
    t0 = time.perf_counter()
    bundle = export_bundle(
        [VariantSpec("1.5mm", (models["850"], models["851"]), 0)], args.work / "bundle", calibration,
        ExportSettings(precisions=("fp32", "int8"), totalseg=True, labels_file=LABELS, gate=Gate(),
                       validation_contrasts=tuple(c for c in args.contrasts.split(",") if c),
                       remedies=tuple(r for r in args.remedies.split(",") if r and r != "none"),
                       remedy_time_s=args.remedy_time, time_budget_s=args.time_budget or None,
                       torch_check_patches=1, latency_repeats=2))
    seconds = time.perf_counter() - t0
    report = json.loads((bundle.path / "validation.json").read_text())
    print(f"\nexport: {seconds:.0f} s, peak RSS {peak_rss_mb():.0f} MB (this process)")
    rows = []
    for prec, verdict in bundle.precision_verdicts.items():
        rows.append({"precision": prec, "verdict": verdict["verdict"], "remedy": verdict.get("remedy") or "-",
                     "min_dice": verdict.get("min_dice"), "mean_dice": verdict.get("mean_dice"),
                     "worst": (verdict.get("worst") or {}).get("structure")})
    print_table(rows, [("precision", "PRECISION"), ("verdict", "VERDICT"), ("remedy", "REMEDY"),
                       ("min_dice", "MIN DICE"), ("mean_dice", "WORST MEAN"), ("worst", "WORST STRUCTURE")])
    tried = report.get("remedies_tried", [])
    print(f"\nremedies tried ({report.get('remedies_s', 0)} s; {report.get('time_budget')}):")
    print_table([{"remedy": t["remedy"], "verdict": t["verdict"], "min_dice": t.get("min_dice", "-"),
                  "mean_dice": t.get("mean_dice", "-"), "worst": (t.get("worst") or {}).get("structure", "-"),
                  "seconds": t.get("seconds", "-"), "reason": t.get("reason", "")} for t in tried],
                [("remedy", "REMEDY"), ("verdict", "VERDICT"), ("min_dice", "MIN DICE"), ("mean_dice", "WORST MEAN"),
                 ("worst", "WORST STRUCTURE"), ("seconds", "S"), ("reason", "REASON")])
    for t in tried:
        for part, kept in (t.get("kept_in_float") or {}).items():
            print(f"  {t['remedy']}: {part} kept in float: "
                  + ", ".join(f"{k['type']} {k['where']} (+{k['added_noise']:.2g})" for k in kept))
    sensitivity = report.get("sensitivity") or {}
    for part, ranking in (sensitivity.get("ranking") or {}).items():
        print(f"  sensitivity {part} ({sensitivity.get('seconds')} s, {len(ranking)} operations), top 8: "
              + ", ".join(f"{k['type']} {k['where']} (+{k['added_noise']:.2g})" for k in ranking[:8]))
    if any(t.get("per_structure_min_dice") for t in tried):
        print("\nlowest Dice vs FP32 per structure, per remedy step (1..n as in the table above):")
        steps = [t for t in tried if t.get("per_structure_min_dice")]
        names = sorted({n for t in steps for n in t["per_structure_min_dice"]})
        print_table([{"structure": n, **{f"s{i}": t["per_structure_min_dice"].get(n, "-") for i, t in
                                         enumerate(steps, 1)}} for n in names],
                    [("structure", "STRUCTURE"), *((f"s{i}", f"{i}") for i in range(1, len(steps) + 1))])
    print("\nDice vs FP32 per structure (lowest over series and contrasts):")
    per: dict[str, dict[str, float]] = {}
    for r in [*report.get("segmentation_vs_fp32_before_remedy", []), *report["segmentation_vs_fp32"]]:
        key = r["precision"] + (" as quantized" if r in report.get("segmentation_vs_fp32_before_remedy", [])
                                else "")
        for name, d in r["per_class_dice_vs_fp32"].items():
            if d is not None:
                per.setdefault(name, {})[key] = min(per.get(name, {}).get(key, 1.0), d)
    keys = sorted({k for v in per.values() for k in v})
    print_table([{"structure": n, **{k: round(v, 4) for k, v in d.items()}} for n, d in sorted(per.items())],
                [("structure", "STRUCTURE"), *((k, k.upper()) for k in keys)])
    print("\nseconds per tile:")
    print_table(report["latency_per_tile"], [("part", "PART"), ("precision", "PRECISION"),
                                             ("seconds_per_tile", "S/TILE"), ("patch_size", "PATCH")])
    write_json(args.json, {"machine": machine(), "export_s": seconds, "peak_rss_mb": peak_rss_mb(),
                           "verdicts": bundle.precision_verdicts, "report": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
