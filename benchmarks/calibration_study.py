"""How the INT8 calibration settings change Dice (INT8 vs FP32) on the real MRI and its contrast variants.

    python benchmarks/calibration_study.py [--model tests/fixtures/models/Dataset900_EdgesegDemoMR/...]

Exports the small real model with several NNCF settings (calibration patches, bias correction, accuracy
control) and prints, per setting, the export time and the INT8-vs-FP32 mean Dice per contrast from the
bundle's validation report. The bundle's default (recorded in ``edgeseg export --help``) is chosen from this.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402
from runtime_speed import MRI, SHARED, SMALL_MODEL  # noqa: E402

SETTINGS = [
    ("2 patches, fast BC", ["--calibration-patches", "2"]),
    ("4 patches, fast BC", ["--calibration-patches", "4"]),
    ("8 patches, fast BC", ["--calibration-patches", "8"]),
    ("20 patches (8 tiles + 12 random), fast BC: default", ["--calibration-patches", "20"]),
    ("8 patches, full BC", ["--calibration-patches", "8", "--bias-correction", "full"]),
    ("8 patches, accuracy control 0.01", ["--calibration-patches", "8", "--accuracy-control",
                                          "--max-dice-drop", "0.01"]),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=SMALL_MODEL)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    from edgeseg.cli import main as cli

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calibration"
        calib.mkdir()
        (calib / MRI.name).write_bytes(MRI.read_bytes())
        for name, extra in SETTINGS:
            out = Path(tmp) / "bundle"
            t0 = time.perf_counter()
            rc = cli(["-q", "export", str(args.model), "--reorient", "RAS", "--labels",
                      str(SHARED / "total_mr_labels.json"), "--calibration", str(calib), "--out", str(out),
                      "--force", *extra])
            if rc:
                return rc
            wall = time.perf_counter() - t0
            report = json.loads((out / "validation.json").read_text())
            row = {"setting": name, "export_s": wall}
            for r in report["segmentation_vs_fp32"]:
                if r["precision"] == "int8":
                    row[r["contrast"]] = r["mean_dice_vs_fp32"]
            row["mean"] = report["summary"]["int8"]["mean_dice_vs_fp32"]
            rows.append(row)
            print(f"  {name}: mean Dice {row['mean']:.4f} ({wall:.0f} s)", flush=True)
    print()
    print_table(rows, [("setting", "NNCF setting"), ("export_s", "export s"), ("original", "original"),
                       ("inverted", "inverted"), ("gamma0.5", "gamma 0.5"), ("gamma2", "gamma 2"),
                       ("mean", "mean Dice INT8 vs FP32")])
    write_json(args.json, {"machine": machine(), "model": str(args.model), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
