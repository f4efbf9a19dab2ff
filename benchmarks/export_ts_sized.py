"""Export time and peak memory of the TotalSegmentator-sized two-part model (and the 3 mm variant).

    python benchmarks/export_ts_sized.py --work /tmp/edgeseg-bench [--patches 20] [--bias-correction fast]

Generates the TS-sized models (random weights: speed and memory only, not accuracy), runs ``edgeseg export``
in a child process (its peak RSS is the child's ru_maxrss), and prints a table: wall time, peak RSS, per-part
quantization time and the per-tile latencies the export measured.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402
from runtime_speed import MRI, ts_models  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/edgeseg-bench"))
    p.add_argument("--patches", type=int, default=20, help="NNCF calibration subset size")
    p.add_argument("--bias-correction", choices=("fast", "full"), default="fast")
    p.add_argument("--with-3mm", action="store_true", help="also export the 3 mm variant into the same bundle")
    p.add_argument("--remedies", default="accuracy_control,float_layers,bf16",
                   help="edgeseg export --remedies (random weights fail the fidelity gate: the remedies run and are "
                        "part of the export time; 'none' measures the export without them)")
    p.add_argument("--remedy-time", type=float, default=300.0, help="edgeseg export --remedy-time")
    p.add_argument("--time-budget", type=float, default=900.0,
                   help="edgeseg export --time-budget (default 900 s, the issue's bound; 0: none)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    models = ts_models(args.work)
    calib = args.work / "calibration"
    calib.mkdir(parents=True, exist_ok=True)
    if not (calib / MRI.name).exists():
        (calib / MRI.name).write_bytes(MRI.read_bytes())
    out = args.work / f"bundle-export-bench-{args.patches}-{args.bias_correction}"
    cmd = [sys.executable, "-m", "edgeseg", "export", "--variant", "1.5mm", str(models["850"]), str(models["851"])]
    if args.with_3mm:
        cmd += ["--variant", "3mm", str(models["852"])]
    cmd += ["--totalseg", "--labels", str(MRI.parent / "total_mr_labels.json"), "--calibration", str(calib),
            "--out", str(out), "--force", "--calibration-patches", str(args.patches),
            "--bias-correction", args.bias_correction, "--contrasts", "original", "--remedies", args.remedies,
            "--remedy-time", str(args.remedy_time), "--time-budget", str(args.time_budget)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    if proc.returncode:
        print(proc.stderr[-4000:])
        return proc.returncode
    report = json.loads((out / "bundle.json").read_text())
    validation = json.loads((out / "validation.json").read_text())
    labels = len(report["labels"])
    rows = [{"what": "export 1.5mm parts 850+851" + (" + 3mm 852" if args.with_3mm else ""),
             "wall_s": wall, "peak_rss_gb": peak / 1024, "labels": labels, "patches": args.patches,
             "bias_correction": args.bias_correction}]
    print_table(rows, [("what", "export"), ("wall_s", "wall s"), ("peak_rss_gb", "peak RSS GB"),
                       ("labels", "merged labels"), ("patches", "calib patches"), ("bias_correction", "bias corr")])
    for prec, verdict in report.get("precision_verdicts", {}).items():
        print(f"{prec}: {verdict['verdict']} (lowest structure Dice {verdict.get('min_dice')}, remedies tried: "
              f"{[(t['remedy'], t['verdict'], t.get('seconds')) for t in verdict.get('remedies_tried', [])]})")
    budget = validation.get("time_budget") or {}
    print(f"time: base export {budget.get('base_export_s')} s, remedies {validation.get('remedies_s', 0)} s, "
          f"bound by {budget.get('remedy_deadline', '-')} (budget {budget.get('time_budget_s')} s)")
    print()
    q = [{"part": k, "seconds": v} for k, v in validation["quantization_s"].items()]
    print_table(q, [("part", "quantized part"), ("seconds", "NNCF s")])
    print()
    lat = [r for r in validation["latency_per_tile"] if "seconds_per_tile" in r]
    print_table(lat, [("variant", "variant"), ("part", "part"), ("precision", "precision"),
                      ("seconds_per_tile", "s / 128^3 tile")])
    write_json(args.json, {"machine": machine(), "export": rows, "quantization_s": validation["quantization_s"],
                           "latency_per_tile": lat, "command": cmd})
    return 0


if __name__ == "__main__":
    sys.exit(main())
