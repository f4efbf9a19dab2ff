"""The writers at scanner size: seconds per writer of a 50-structure result on a 300-slice DICOM series.

Usage:

    python benchmarks/writers.py                                  # 320x260x300, 50 structures, best of 2
    python benchmarks/writers.py --slices 300 --repeats 2 --label after --json /tmp/writers.json

The series and label map are :mod:`dicomseg_types`'s (the demo MRI resampled onto 320x260 x ``--slices`` at
1.19x1.19x1.5 mm as a classic MR series; all 50 total_mr structures as organ-sized ellipsoids). Each row is one
writer called as :func:`edgeseg.runtime.write.write_results` calls it, best of ``--repeats``, in this process:
the mask summary (one pass over the label map shared by the writers below, where the runtime has one), the
statistics (computed and written), the preview, the NIfTI label map, the DICOM-SEG (BINARY and LABELMAP) and the
DICOM SR of the BINARY SEG. ``--label`` names the run in the table (e.g. "before"/"after" on the same machine).
"""
from __future__ import annotations

import edgeseg  # noqa: F401 - before numpy: the process set-up edgeseg's own commands have (edgeseg/_memory.py)

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, print_table, write_json  # noqa: E402
from dicomseg_types import LABELS, _phantom, _series  # noqa: E402


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--label", default="", help="name of this run in the table (e.g. before, after)")
    ap.add_argument("--only", default="", help="comma-separated writers to run (default: all)")
    ap.add_argument("--work", type=Path, help="folder for the series and outputs (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write the results (with machine and settings) here")
    args = ap.parse_args(argv)

    import pydicom

    from edgeseg.runtime.read import read_series
    from edgeseg.runtime.write import write_dicom_seg, write_dicom_sr, write_labelmap, write_preview
    from edgeseg.runtime.write import statistics as stats_mod

    summarize = getattr(stats_mod, "summarize_mask", None)  # the one pass (absent before it existed)
    labels = {int(k): v for k, v in json.loads(LABELS.read_text(encoding="utf-8")).items()}
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeseg-writebench-") as tmp:
        work = args.work or Path(tmp)
        t0 = time.perf_counter()
        shutil.rmtree(work / "series", ignore_errors=True)  # a --work used before holds another series (new UIDs)
        folder, _, _ = _series(work / "series", args.slices)
        volume = read_series(folder)
        labelmap = _phantom(volume.shape, len(labels))
        print(f"series made and read in {time.perf_counter() - t0:.1f} s", flush=True)
        n_present = len([v for v in np.unique(labelmap) if v > 0])
        summary = summarize(volume, labelmap, labels) if summarize is not None else None
        kw: dict[str, Any] = {"summary": summary} if summary is not None else {}

        def row(name: str, fn: Callable[[], Any], detail: str = "") -> Any:
            if only and name not in only:
                return None
            seconds, result = _best(fn, args.repeats)
            rows.append({"run": args.label, "writer": name, "seconds": round(seconds, 3), "detail": detail})
            print(f"  {name}: {seconds:.3f} s", flush=True)
            return result

        if summarize is not None:
            row("mask summary (one pass)", lambda: summarize(volume, labelmap, labels))
        stats = row("statistics", lambda: stats_mod.write_statistics(
            work / "statistics.json", stats_mod.compute_statistics(volume, labelmap, labels, **kw)))
        stats = stats_mod.compute_statistics(volume, labelmap, labels, **kw)
        row("preview", lambda: write_preview(work / "preview.png", volume, labelmap, labels, **kw))
        row("nifti labelmap", lambda: write_labelmap(work / "seg.nii.gz", labelmap, volume, labels))
        segments = None
        for seg_type in ("BINARY", "LABELMAP"):
            path = work / f"{seg_type.lower()}.dcm"
            got = row(f"dicom-seg {seg_type}", lambda: write_dicom_seg(
                path, volume, labelmap, labels, segmentation_type=seg_type, **kw))
            if got is not None and path.exists():
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                rows[-1]["detail"] = f"{int(ds.NumberOfFrames)} frames, {path.stat().st_size / 1e6:.1f} MB"
                if seg_type == "BINARY":
                    segments = got
        if segments is not None:
            row("dicom sr", lambda: write_dicom_sr(work / "sr.dcm", volume, work / "binary.dcm", segments, stats),
                f"{len(segments)} segments")
    print(f"\nWriters on a {volume.shape[0]}x{volume.shape[1]}x{volume.shape[2]} DICOM series, {n_present} "
          f"structures, best of {args.repeats}; peak RSS {peak_rss_mb():.0f} MB")
    print_table(rows, [("run", "run"), ("writer", "writer"), ("seconds", "seconds"), ("detail", "detail")])
    write_json(args.json, {"machine": machine(), "settings": {"slices": args.slices, "repeats": args.repeats,
                                                               "shape": list(volume.shape)}, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
