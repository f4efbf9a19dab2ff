"""Runtime speed and memory: nnunetv2's predictor (PyTorch CPU) vs edgeseg FP32 vs edgeseg INT8.

Usage (the README's benchmark section names the exact commands):

    python benchmarks/runtime_speed.py --small                 # demo model on the real MRI (3 mm)
    python benchmarks/runtime_speed.py --ts-sized --work /tmp/edgeseg-bench   # TotalSegmentator-sized nets

``--ts-sized`` generates the TotalSegmentator-sized models (random weights, 1.5 mm parts 850 + 851 and the
3 mm model 852), exports them with ``edgeseg export --totalseg`` unless a bundle is given, and segments a
256x208x160 @ 1.5 mm volume built from the real MRI (resampled to 1.5 mm and reflected to that size). Each
configuration runs in its own process; the table gives wall seconds per stage and the peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers: the clinical-grid volume
from _common import machine, peak_rss_mb, print_table, run_child, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MRI = REPO / "edgeseg" / "demo" / "mri" / "example_mr_sm.nii.gz"
LABELS = REPO / "edgeseg" / "demo" / "mri" / "total_mr_labels.json"
SMALL_MODEL = next((REPO / "tests" / "fixtures" / "models" / "Dataset900_EdgesegDemoMR").glob("*__3d_fullres"), None)


# ----------------------------------------------------------------------------------------------- workers

def worker_edgeseg(args: argparse.Namespace) -> dict[str, Any]:
    from edgeseg.bundle import load_bundle
    from edgeseg.runtime.read import read_series
    from edgeseg.runtime.options import SegmentOptions
    from edgeseg.runtime.segment import Timings
    from edgeseg.runtime.segmenter import Segmenter

    t0 = time.perf_counter()
    bundle = load_bundle(args.bundle)
    vol = read_series(Path(args.volume))
    read_s = time.perf_counter() - t0
    timings = Timings()
    options = SegmentOptions(precision=args.precision, variant=args.variant, threads=args.threads,
                             cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    t0 = time.perf_counter()
    labels, record = Segmenter(bundle, options).segment_volume(vol, timings=timings)
    total = time.perf_counter() - t0
    out = {"total_s": total, "warm_total_s": total - timings.compile, "read_s": read_s,
           "preprocess_s": timings.preprocess, "compile_s": timings.compile,
           "infer_s": timings.infer, "postprocess_s": timings.resample + timings.postprocess,
           "precision_used": ",".join(p["precision"] for p in record["parts"]),
           "tiles": sum(p["tiles"] for p in record["parts"]), "peak_rss_mb": peak_rss_mb()}
    if args.save_labels:
        import numpy as np

        np.save(args.save_labels, labels)
    return out


def worker_nnunet(args: argparse.Namespace) -> dict[str, Any]:
    """nnunetv2's predictor on the same weights, fed as TotalSegmentator feeds it (RAS, task spacing)."""
    import nibabel as nib
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from helpers.nnunet_reference import reference_predictor

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    img = nib.as_closest_canonical(nib.load(args.volume))
    data = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)[None]
    spacing = [float(s) for s in img.header.get_zooms()[:3][::-1]]
    infer = 0.0
    for folder in args.models:
        predictor = reference_predictor(Path(folder), tile_step_size=args.tile_step)
        t0 = time.perf_counter()
        predictor.predict_single_npy_array(data, {"spacing": spacing})
        infer += time.perf_counter() - t0
    return {"total_s": infer, "warm_total_s": infer, "infer_s": infer, "precision_used": "torch fp32",
            "peak_rss_mb": peak_rss_mb()}


# ----------------------------------------------------------------------------------------------- setup

def make_benchmark_volume(path: Path, shape=(256, 208, 160), spacing=1.5) -> Path:
    """The real MRI resampled to ``spacing`` and reflected to ``shape`` (LPS-like axis codes kept); made once."""
    if path.is_file():
        return path
    from helpers.totalseg_reference import clinical_volume

    return clinical_volume(MRI, path, shape, (spacing,) * 3)


def ts_models(work: Path) -> dict[str, Path]:
    from helpers.testmodels.ts_sized import generate

    marker = work / "models" / "done.json"
    if marker.is_file():
        return {k: Path(v) for k, v in json.loads(marker.read_text()).items()}
    out = generate(work / "models", ("850", "851", "852"))
    marker.write_text(json.dumps({k: str(v) for k, v in out.items()}))
    return out


# ----------------------------------------------------------------------------------------------- main

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=("edgeseg", "nnunet"))
    p.add_argument("--bundle")
    p.add_argument("--volume")
    p.add_argument("--precision", default="auto")
    p.add_argument("--variant")
    p.add_argument("--threads", type=int)
    p.add_argument("--models", nargs="*")
    p.add_argument("--tile-step", type=float, default=0.5)
    p.add_argument("--save-labels")
    p.add_argument("--cache-dir", help="OpenVINO compiled-model cache for the edgeseg rows (a workstation keeps one)")
    p.add_argument("--small", action="store_true", help="the demo model on the real MRI")
    p.add_argument("--ts-sized", action="store_true", help="TotalSegmentator-sized nets, 256x208x160 @ 1.5 mm")
    p.add_argument("--work", type=Path, default=Path("/tmp/edgeseg-bench"))
    p.add_argument("--ts-bundle", type=Path, help="an existing TS-sized bundle (skip the export)")
    p.add_argument("--skip-nnunet", action="store_true", help="skip the slow PyTorch reference")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    args = p.parse_args()

    if args.worker:
        result = worker_edgeseg(args) if args.worker == "edgeseg" else worker_nnunet(args)
        print(json.dumps(result))
        return 0

    rows: list[dict[str, Any]] = []
    me = [str(Path(__file__).resolve())]

    def measure(name: str, cmd: list[str]) -> None:
        result, wall = run_child(me + cmd)
        result.update(config=name, process_wall_s=wall)
        rows.append(result)
        print(f"  measured {name}: {result['total_s']:.2f} s, peak {result['peak_rss_mb']:.0f} MB", flush=True)

    if args.small:
        from edgeseg.demo import demo_bundle_path

        vol = str(MRI)
        bundle = str(demo_bundle_path())
        if not args.skip_nnunet and SMALL_MODEL:
            measure("small: nnunetv2 predictor (torch fp32)", ["--worker", "nnunet", "--volume", vol,
                                                              "--models", str(SMALL_MODEL), "--tile-step", "0.5"])
        for prec in ("fp32", "int8"):
            measure(f"small: edgeseg {prec}", ["--worker", "edgeseg", "--bundle", bundle, "--volume", vol,
                                               "--precision", prec])
    if args.ts_sized:
        work = args.work
        vol = str(make_benchmark_volume(work / "volume_256x208x160_1.5mm.nii.gz"))
        models = ts_models(work)
        bundle = args.ts_bundle or work / "bundle"
        if not (Path(bundle) / "bundle.json").is_file():
            print("exporting the TS-sized bundle first (see benchmarks/export_ts_sized.py for its figures)")
            calib = work / "calibration"
            calib.mkdir(parents=True, exist_ok=True)
            if not (calib / MRI.name).exists():
                (calib / MRI.name).write_bytes(MRI.read_bytes())
            from edgeseg.cli import main as cli

            rc = cli(["export", "--variant", "1.5mm", str(models["850"]), str(models["851"]),
                      "--variant", "3mm", str(models["852"]), "--totalseg", "--labels",
                      str(LABELS), "--calibration", str(calib), "--out", str(bundle),
                      "--contrasts", "original", "--force"])
            if rc:
                return rc
        if not args.skip_nnunet:
            measure("ts 1.5mm 2 parts: nnunetv2 predictor (torch fp32)",
                    ["--worker", "nnunet", "--volume", vol, "--models", str(models["850"]), str(models["851"]),
                     "--tile-step", "0.8"])
        for prec in ("fp32", "int8", "auto"):
            measure(f"ts 1.5mm 2 parts: edgeseg {prec}", ["--worker", "edgeseg", "--bundle", str(bundle), "--volume",
                                                          vol, "--precision", prec, "--variant", "1.5mm"])
        for prec in ("int8",):
            measure(f"ts 3mm: edgeseg {prec}", ["--worker", "edgeseg", "--bundle", str(bundle), "--volume", vol,
                                                "--precision", prec, "--variant", "3mm"])
        cache = str(work / "model_cache")
        for run in ("fills the cache", "from the cache"):
            for variant in ("1.5mm", "3mm"):
                measure(f"ts {variant}: edgeseg int8, model cache {run}",
                        ["--worker", "edgeseg", "--bundle", str(bundle), "--volume", vol, "--precision", "int8",
                         "--variant", variant, "--cache-dir", cache])
    if not rows:
        p.error("choose --small and/or --ts-sized")
    print()
    print_table(rows, [("config", "configuration"), ("precision_used", "precision"), ("tiles", "tiles"),
                       ("total_s", "total s"), ("warm_total_s", "warm s"), ("preprocess_s", "pre s"),
                       ("compile_s", "compile s"),
                       ("infer_s", "infer s"), ("postprocess_s", "post s"), ("read_s", "read s"),
                       ("peak_rss_mb", "peak RSS MB")])
    ref = {r["config"].split(":")[0]: r["total_s"] for r in rows if "nnunetv2" in r["config"]}
    for r in rows:
        base = ref.get(r["config"].split(":")[0])
        if base and "edgeseg" in r["config"]:
            print(f"speed-up vs nnunetv2 [{r['config']}]: {base / r['total_s']:.1f}x")
    write_json(args.json, {"machine": machine(), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
