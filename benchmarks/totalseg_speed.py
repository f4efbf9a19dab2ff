"""TotalSegmentator 2.18 on the CPU vs edgeseg, back to back, with TotalSegmentator-sized networks.

The speed half of the TotalSegmentator comparison (``totalseg_parity.py`` is the fidelity half, on trained
stand-ins): the TotalSegmentator-sized random-weight models of ``benchmarks/export_ts_sized.py``
(``tests/helpers/testmodels/ts_sized.py``: the real networks' size, patch and plans) are installed where
TotalSegmentator looks for its ``total_mr`` weights, and the bundle exported from the same folders is run by
edgeseg. The input is the real MRI resampled and reflected to 256x208x160 @ 1.5 mm. Every row runs in its own
process, one after the other; seconds are the segmentation call after imports, model compilation included
(TotalSegmentator's ``totalsegmentator()`` call, edgeseg's ``Segmenter`` set-up plus ``segment_volume``).
Random weights: the agreement columns say whether both sides computed the same thing from the same noise, not
whether the masks are good.

"network alone" is the part networks' own time on this CPU (each part's tiles, times its mirrorings where it
mirrors, times its median seconds per tile, timed after the run on the engines it used, nothing around them) and
"x ceiling" TotalSegmentator's seconds over it: the most any edgeseg around these networks could reach here. For
the INT8 rows the network's INT8 convolutions set that pace (on a CPU with AMX they run several times faster than
with AVX-512 VNNI alone; TotalSegmentator's float32 does not).

    python benchmarks/totalseg_speed.py --work /tmp/edgeseg-bench \
        --bundle /tmp/edgeseg-bench/bundle-export-bench-20-fast [--variants 1.5mm,3mm] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import machine, print_table, run_child, write_json  # noqa: E402
from runtime_speed import make_benchmark_volume, ts_models  # noqa: E402

PARITY = Path(__file__).resolve().parent / "totalseg_parity.py"


def install_ts_sized(home: Path, models: dict[str, Path]) -> Path:
    """A ``TOTALSEG_HOME_DIR`` whose ``total_mr`` weights are the TS-sized model folders (linked, not copied)."""
    from helpers.totalseg_reference import DATASETS, TRAINER_DIR

    results = home / "nnunet" / "results"
    for key, dataset in DATASETS.items():
        link = results / dataset / TRAINER_DIR
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(models[key].resolve(), target_is_directory=True)
    config = home / "config.json"
    if not config.is_file():
        config.write_text(json.dumps({"totalseg_id": "totalseg_edgeseg_bench", "send_usage_stats": False,
                                      "prediction_counter": 0}))
    return home


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/edgeseg-bench"))
    p.add_argument("--bundle", type=Path, required=True, help="the TS-sized bundle (benchmarks/export_ts_sized.py)")
    p.add_argument("--variants", default="1.5mm", help="comma list of 1.5mm (two parts) and 3mm (--fast)")
    p.add_argument("--precisions", default="int8,fp32")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import nibabel as nib
    import numpy as np

    from helpers.totalseg_reference import agreement, run_totalsegmentator

    home = install_ts_sized(args.work / "totalseg_home_ts_sized", ts_models(args.work))
    image = make_benchmark_volume(args.work / "volume_256x208x160_1.5mm.nii.gz")
    rows = []
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        fast = variant == "3mm"
        ref_path = args.work / f"ts_speed_{variant}_totalseg.nii.gz"
        ts = run_totalsegmentator(home, image, ref_path, fast=fast)
        print(f"  TotalSegmentator {variant}: {ts['seconds']:.1f} s, peak {ts['peak_rss_mb']:.0f} MB", flush=True)
        reference = np.asarray(nib.load(ref_path).dataobj)
        for precision in [q.strip() for q in args.precisions.split(",") if q.strip()]:
            out = args.work / f"ts_speed_{variant}_{precision}.nii.gz"
            result, _ = run_child([str(PARITY), "--worker", "--bundle", str(args.bundle), "--image", str(image),
                                   "--out", str(out), "--precision", precision, "--variant", variant, "--floor"])
            score = agreement(np.asarray(nib.load(out).dataobj), reference)
            row = {"variant": variant + (" (1 part)" if fast else " (2 parts)"), "precision": result["precision"],
                   "tiles": result["tiles"], "ts_s": ts["seconds"], "ts_mb": ts["peak_rss_mb"],
                   "edgeseg_s": result["seconds"], "edgeseg_mb": result["peak_rss_mb"],
                   "speedup": ts["seconds"] / result["seconds"], "agreement": score["agreement"],
                   "floor_s": result["network_floor_s"], "ceiling": ts["seconds"] / result["network_floor_s"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print_table(rows, [("variant", "variant"), ("precision", "edgeseg precision"), ("tiles", "tiles"),
                       ("ts_s", "TotalSeg 2.18 s"), ("edgeseg_s", "edgeseg s"), ("speedup", "x faster"),
                       ("floor_s", "network alone s"), ("ceiling", "x ceiling"),
                       ("ts_mb", "TotalSeg MB"), ("edgeseg_mb", "edgeseg MB"), ("agreement", "voxel agreement")])
    write_json(args.json, {"machine": machine(), "image": str(image), "bundle": str(args.bundle), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
