"""Reading one series: ``discover_series`` + ``read_series`` seconds and peak RSS per input (issue 21: the stages
around the network must be a small share of the wall time).

Usage:

    python benchmarks/read_series.py /tmp/i21ts/inputs/512x512x200-nifti/series.nii.gz \\
        /tmp/i21ts/inputs/512x512x400-nifti/series.nii.gz [--repeats 3] [--label after] [--json out.json]

The inputs are any series ``discover_series`` finds (NIfTI, PAR/REC, DICOM folders), e.g. the ones
``benchmarks/series_scaling.py`` makes under its ``--work``. Each input is read ``--repeats`` times, each time in a
fresh child process (its peak RSS, ``VmHWM``, is its own and no page of an earlier read is reused; the file itself
may be in the OS page cache after the first read, as it is for a series the watcher just received). Printed per
input: the fastest and the median read seconds, the peak RSS, the array's shape, dtype, whether it is C-contiguous,
and a SHA-256 of its bytes and of its affine (so runs before and after a change can be compared value for value).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, print_table, run_child, write_json  # noqa: E402


def worker(path: Path) -> dict[str, Any]:
    import numpy as np

    from edgeseg.runtime.read import discover_series, read_series

    t0 = time.perf_counter()
    (ref,) = discover_series(path)
    vol = read_series(ref)
    seconds = time.perf_counter() - t0
    rss = peak_rss_mb()
    array = vol.array
    return {"read_s": seconds, "peak_rss_mb": rss, "shape": "x".join(str(n) for n in array.shape),
            "dtype": str(array.dtype), "c_contiguous": bool(array.flags.c_contiguous),
            "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16],
            "affine_sha256": hashlib.sha256(np.asarray(vol.affine, np.float64).tobytes()).hexdigest()[:16]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", type=Path)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--label", default="", help="a name for this run in the table (e.g. before/after)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return 0
    rows = []
    for path in args.inputs:
        runs = [run_child([__file__, "--worker", str(path)])[0] for _ in range(max(1, args.repeats))]
        seconds = [r["read_s"] for r in runs]
        last = runs[-1]
        if len({(r["sha256"], r["affine_sha256"]) for r in runs}) != 1:
            raise RuntimeError(f"{path}: the reads did not give the same values")
        rows.append({"label": args.label, "input": str(path), "gz_mb": round(path.stat().st_size / 1e6, 1)
                     if path.is_file() else None, "best_s": min(seconds), "median_s": statistics.median(seconds),
                     "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)), "shape": last["shape"],
                     "dtype": last["dtype"], "c_contiguous": last["c_contiguous"], "sha256": last["sha256"],
                     "affine_sha256": last["affine_sha256"], "seconds": seconds})
        print(f"  {path}: {', '.join(f'{s:.2f}' for s in seconds)} s", flush=True)
    print(f"\nReading series ({args.repeats} reads each, each in its own process)" + (f": {args.label}" if args.label
                                                                                          else ""))
    print_table(rows, [("input", "input"), ("gz_mb", "file MB"), ("shape", "shape"), ("best_s", "best s"),
                       ("median_s", "median s"), ("peak_rss_mb", "peak RSS MB"), ("c_contiguous", "C order"),
                       ("sha256", "values sha256"), ("affine_sha256", "affine sha256")])
    write_json(args.json, {"machine": machine(), "label": args.label, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
