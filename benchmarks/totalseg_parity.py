"""edgeseg vs TotalSegmentator itself on clinical grids: agreement, Dice, time and peak memory side by side.

The same trained weights on both sides: the committed demo model as TotalSegmentator's Dataset852 (3 mm,
``--fast``) and two part models cut from it as Dataset850/851 (1.5 mm, two parts merged), installed in a
temporary ``TOTALSEG_HOME_DIR`` (see ``tests/helpers/totalseg_reference.py``). edgeseg exports them with
``--totalseg`` (FP32 + INT8). Input volumes are the real MRI on the grids of the parity issue. TotalSegmentator
runs on the CPU in its own process (``totalsegmentator(..., task="total_mr", ml=True, device="cpu")``); each
edgeseg row runs in its own process too, so every peak RSS is that process's own (TotalSegmentator's: its
process and nnU-Net's worker processes together, sampled every 50 ms). Seconds are the segmentation call after
imports, model compilation included.

Usage: ``python benchmarks/totalseg_parity.py --work /tmp/edgeseg-parity [--json out.json] [--grids a,b]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import machine, peak_rss_mb, print_table, run_child, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MRI = REPO / "edgeseg" / "demo" / "mri" / "example_mr_sm.nii.gz"
LABELS = REPO / "edgeseg" / "demo" / "mri" / "total_mr_labels.json"
PARTS = REPO / "tests" / "fixtures" / "total_mr_example" / "total_mr_parts.json"
DEMO_MODEL = REPO / "tests" / "fixtures" / "models" / "Dataset900_EdgesegDemoMR" / \
    "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"

#: name -> clinical_volume() arguments (None: the real MRI as it is, 3 mm, the 3 mm model's spacing)
GRIDS = {
    "as is 117x91x20 @3mm": None,
    "320x260x40 @1.19x1.19x6 (HASTE-like)": dict(shape=(320, 260, 40), spacing=(1.19, 1.19, 6.0)),
    "320x260x72 @1.19x1.19x3 (Dixon-like)": dict(shape=(320, 260, 72), spacing=(1.19, 1.19, 3.0)),
    "256x208x160 @1.5 iso": dict(shape=(256, 208, 160), spacing=(1.5, 1.5, 1.5)),
    "288x288x48 @1.25x1.25x5 oblique, RAS-stored": dict(shape=(288, 288, 48), spacing=(1.25, 1.25, 5.0),
                                                        rotate_deg=(12.0, 0.0, 8.0), storage="RAS"),
}
VARIANTS = (("3mm", True), ("1.5mm", False))


def worker(args: argparse.Namespace) -> dict:
    from edgeseg.bundle import load_bundle
    from edgeseg.runtime.read import read_series
    from edgeseg.runtime.options import SegmentOptions
    from edgeseg.runtime.segmenter import Segmenter

    import nibabel as nib
    import numpy as np

    bundle = load_bundle(args.bundle)
    volume = read_series(args.image)
    t0 = time.perf_counter()
    segmenter = Segmenter(bundle, SegmentOptions(precision=args.precision, variant=args.variant))
    labels, record = segmenter.segment_volume(volume)
    seconds = time.perf_counter() - t0
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), volume.affine), args.out)
    result = {"seconds": seconds, "peak_rss_mb": peak_rss_mb(),
              "precision": record["parts"][0]["precision"], "tiles": sum(p["tiles"] for p in record["parts"])}
    if args.floor:  # after the timed call: the network alone, tile after tile, on the engines that just ran
        from edgeseg.runtime.infer.engine import engine_tile_latency
        from edgeseg.runtime.infer.sliding_window import mirror_combinations

        # each tile runs once per mirroring where the part mirrors (nnU-Net's test-time augmentation)
        tiles = {p["name"]: p["tiles"] * len(mirror_combinations(p["mirroring"])) for p in record["parts"]}
        result["network_floor_s"] = sum(tiles[part.name] * engine_tile_latency(segmenter.engine(part), repeats=5)
                                        for part in bundle.variant(record["variant"]).parts)
    return result


def prepare(work: Path) -> tuple[Path, Path]:
    """Stand-in models in a TotalSegmentator home and the edgeseg bundle exported from them (cached)."""
    import shutil

    from edgeseg.export.pipeline import ExportSettings, VariantSpec, export_bundle
    from helpers.totalseg_reference import install_standins

    home, bundle = work / "totalseg_home", work / "bundle"
    if not (home / "config.json").is_file():
        install_standins(home, DEMO_MODEL, PARTS)
    if not (bundle / "bundle.json").is_file():
        results = home / "nnunet" / "results"
        folders = {k: next((results / name).glob("*__3d_fullres"))
                   for k, name in (("850", "Dataset850_TotalSegMRI_part1_organs_1088subj"),
                                   ("851", "Dataset851_TotalSegMRI_part2_muscles_1088subj"),
                                   ("852", "Dataset852_TotalSegMRI_total_3mm_1088subj"))}
        calibration = work / "calibration"
        calibration.mkdir(parents=True, exist_ok=True)
        shutil.copy(MRI, calibration / MRI.name)
        export_bundle([VariantSpec("1.5mm", (folders["850"], folders["851"]), 0),
                       VariantSpec("3mm", (folders["852"],), 1)], bundle, calibration,
                      ExportSettings(precisions=("fp32", "int8"), totalseg=True, labels_file=LABELS,
                                     validation_contrasts=("original",)))
    return home, bundle


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/edgeseg-parity"))
    p.add_argument("--json", type=Path)
    p.add_argument("--grids", help="comma list of grid name prefixes (default: all)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    import nibabel as nib
    import numpy as np

    from helpers.totalseg_reference import agreement, clinical_volume, run_totalsegmentator

    args.work.mkdir(parents=True, exist_ok=True)
    home, bundle = prepare(args.work)
    wanted = [g.strip() for g in args.grids.split(",")] if args.grids else None
    rows = []
    for index, (grid, spec) in enumerate(GRIDS.items()):
        if wanted and not any(grid.startswith(w) for w in wanted):
            continue
        image = MRI if spec is None else clinical_volume(MRI, args.work / f"grid{index}.nii.gz", **spec)
        for variant, fast in VARIANTS:
            ref_path = args.work / f"grid{index}_{variant}_totalseg.nii.gz"
            ts = run_totalsegmentator(home, image, ref_path, fast=fast)
            reference = np.asarray(nib.load(ref_path).dataobj)
            row = {"grid": grid, "variant": variant + (" (1 part)" if fast else " (2 parts)"),
                   "ts_s": ts["seconds"], "ts_mb": ts["peak_rss_mb"]}
            for precision in ("fp32", "int8"):
                out = args.work / f"grid{index}_{variant}_{precision}.nii.gz"
                result, _ = run_child([__file__, "--worker", "--bundle", str(bundle), "--image", str(image),
                                       "--out", str(out), "--precision", precision, "--variant", variant])
                score = agreement(np.asarray(nib.load(out).dataobj), reference)
                row.update({f"{precision}_agree": score["agreement"], f"{precision}_mean": score["mean_dice"],
                            f"{precision}_min": score["min_dice"], f"{precision}_s": result["seconds"],
                            f"{precision}_mb": result["peak_rss_mb"]})
            row["speedup"] = row["ts_s"] / row["int8_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print_table(rows, [("grid", "input grid"), ("variant", "variant"),
                       ("fp32_agree", "FP32 agreement"), ("fp32_mean", "FP32 mean Dice"),
                       ("fp32_min", "FP32 min Dice"), ("int8_agree", "INT8 agreement"),
                       ("int8_mean", "INT8 mean Dice"), ("int8_min", "INT8 min Dice"),
                       ("ts_s", "TotalSeg s"), ("int8_s", "edgeseg INT8 s"), ("speedup", "x faster"),
                       ("ts_mb", "TotalSeg MB"), ("int8_mb", "edgeseg INT8 MB")])
    write_json(args.json, {"machine": machine(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
