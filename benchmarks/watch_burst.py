"""Watcher burst: 20 series dropped at once into a watched folder; throughput and time-budget hit rate.

Usage:

    python benchmarks/watch_burst.py                          # real segmenter, packaged demo bundle, NIfTI copies
    python benchmarks/watch_burst.py --format dicom --series 20 --budget 60 --json /tmp/burst.json
    python benchmarks/watch_burst.py --bundle /path/to/bundle --device GPU
    python benchmarks/watch_burst.py --fake 0.5               # the watcher's own overhead (no model runs)

Copies of the real demo MRI (117x91x20 @ 3 mm) arrive all at once, as NIfTI files or as DICOM series (one folder
each, written with edgeseg.demo.dicom_series), into a temporary watched folder. The watcher runs in this process
with the real :class:`edgeseg.runtime.segmenter.Segmenter` (unless ``--fake``: the tests' fake segmenter,
``tests/helpers/fake_segmenter.py``, injected into the watcher). Reported: series per minute
from the drop to the last result (quiet period included) and over the busy time only, the share of series that
met the time budget, the planner's predicted vs actual seconds, with the machine and the settings.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _stage(fmt: str, n: int, staging: Path, mri: Path) -> list[tuple[list[Path], str]]:
    """(files, target sub-folder) per series, written before the clock starts."""
    out = []
    for i in range(n):
        if fmt == "nifti":
            out.append(([mri], f"series{i:02d}"))
        else:
            from edgeseg.demo.dicom_series import write_dicom_series

            files = write_dicom_series(mri, staging / f"s{i:02d}", series_description=f"burst {i:02d}")
            out.append((list(files), f"series{i:02d}"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=20)
    ap.add_argument("--format", choices=("nifti", "dicom"), default="nifti")
    ap.add_argument("--bundle", default="demo", help="bundle folder or 'demo' (default)")
    ap.add_argument("--fake", type=float, nargs="?", const=0.0, default=None, metavar="SECONDS",
                    help="use the fake segmenter (sleeps SECONDS per series): measures the watcher alone")
    ap.add_argument("--budget", type=float, default=120.0, help="time_budget_s per series (default 120)")
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--concurrent", type=int, default=1, help="max_concurrent_series")
    ap.add_argument("--quiet", type=float, default=2.0, help="quiet_period_s (default 2)")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed after)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    from edgeseg.demo import BUNDLE_DIR, demo_mri_path
    from edgeseg.runtime.watch.config import load_config
    from edgeseg.runtime.watch.service import Watcher

    bundle = BUNDLE_DIR if args.bundle == "demo" else Path(args.bundle).resolve()
    if args.fake is None and not (bundle / "bundle.json").is_file():
        print(f"The real-segmenter burst is unavailable: no model bundle at {bundle} (no bundle.json).\n"
              "Build the demo bundle, pass --bundle PATH, or run with --fake to measure the watcher alone.")
        write_json(args.json, {"available": False, "reason": f"no bundle at {bundle}", "machine": machine()})
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="edgeseg-burst-"))
    root = work / "incoming"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for sub in ("state", "staging"):
        shutil.rmtree(work / sub, ignore_errors=True)
    mri = demo_mri_path()
    staged = _stage(args.format, args.series, work / "staging", mri)
    settings = {
        "series": args.series, "format": args.format, "segmenter": "fake" if args.fake is not None else "real",
        "fake_delay_s": args.fake, "bundle": str(bundle), "device": args.device, "precision": args.precision,
        "threads": args.threads, "max_concurrent_series": args.concurrent, "quiet_period_s": args.quiet,
        "time_budget_s": args.budget, "input": f"{mri.name} (117x91x20 @ 3 mm)",
    }
    config = load_config(None, {
        "roots": [str(root)], "bundle": str(bundle if bundle.exists() else work), "quiet_period_s": args.quiet,
        "state_dir": str(work / "state"), "device": args.device, "precision": args.precision,
        "threads": args.threads, "time_budget_s": args.budget, "max_concurrent_series": args.concurrent,
        "rescan_interval_s": 0.0,
    }, env={})
    segmenter = None
    if args.fake is not None:  # the tests' fake segmenter; the product has no switch for it
        sys.path.insert(0, str(REPO / "tests"))
        from helpers.fake_segmenter import FakeSegmenter

        segmenter = FakeSegmenter(args.fake, config.segment_options(), ceiling_s=config.time_ceiling_s)
    watcher = Watcher(config, segmenter)
    watcher.start()
    try:
        t_drop = time.perf_counter()
        for files, sub in staged:  # everything arrives at once
            (root / sub).mkdir()
            for f in files:
                shutil.copyfile(f, root / sub / (f"case_{sub}.nii.gz" if args.format == "nifti" else f.name))
        t_copied = time.perf_counter()
        deadline = t_drop + args.timeout
        while len(watcher.history) < args.series and time.perf_counter() < deadline and watcher.alive():
            time.sleep(0.1)
        t_end = time.perf_counter()
    finally:
        watcher.stop()

    records = list(watcher.history)
    per_series = []
    for r in records:
        plan = r.plan
        per_series.append({
            "series": r.name, "ok": r.ok, "variant": plan.variant if plan else None,
            "tile_step": plan.tile_step_size if plan else None,
            "predicted_s": plan.predicted_s if plan else None, "actual_s": r.seconds,
            "within_budget": r.within_budget, "error": r.error,
        })
    ok = [r for r in records if r.ok]
    busy = sum(r.seconds for r in records)
    within = [r for r in records if r.within_budget]
    pred_err = [abs(p["predicted_s"] - p["actual_s"]) / p["actual_s"] for p in per_series
                if p["predicted_s"] and p["actual_s"]]
    summary = {
        "series_done": len(ok), "series_failed": len(records) - len(ok), "series_missing": args.series - len(records),
        "copy_s": t_copied - t_drop, "drop_to_last_result_s": t_end - t_drop,
        "throughput_series_per_min": 60 * len(ok) / (t_end - t_drop) if ok else 0.0,
        "busy_series_per_min": 60 * len(ok) / busy if busy else 0.0,
        "budget_hit_rate": len(within) / len(records) if records else 0.0,
        "first_series_s": records[0].seconds if records else None,
        "median_series_s": statistics.median(r.seconds for r in records) if records else None,
        "max_series_s": max((r.seconds for r in records), default=None),
        "prediction_mean_abs_rel_error": statistics.mean(pred_err) if pred_err else None,
    }

    print(f"\nWatcher burst: {args.series} {args.format} series at once, {settings['segmenter']} segmenter, "
          f"budget {args.budget:g} s, device {args.device}, {args.concurrent} at a time")
    m = machine()
    print(f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['platform']}; "
          + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    print()
    print_table(per_series, [("series", "SERIES"), ("ok", "OK"), ("variant", "VARIANT"), ("tile_step", "STEP"),
                             ("predicted_s", "PREDICTED S"), ("actual_s", "ACTUAL S"),
                             ("within_budget", "IN BUDGET")])
    print()
    print_table([summary], [("series_done", "DONE"), ("series_failed", "FAILED"), ("drop_to_last_result_s", "WALL S"),
                            ("throughput_series_per_min", "SERIES/MIN"), ("busy_series_per_min", "BUSY SERIES/MIN"),
                            ("budget_hit_rate", "BUDGET HIT"), ("median_series_s", "MEDIAN S"),
                            ("first_series_s", "FIRST S")])
    print("\nSERIES/MIN counts from the drop to the last result (quiet period included); BUSY counts segmenting "
          "time only. The first series also compiles the model and measures tile latency.")
    write_json(args.json, {"available": True, "machine": m, "settings": settings, "summary": summary,
                           "series": per_series})
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if len(ok) == args.series else 1


if __name__ == "__main__":
    sys.exit(main())
