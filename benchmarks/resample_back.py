"""Resampling back to the input grid: logits (nnU-Net-style bundles: the band route of ``argmax_resampled`` vs the
brute-force route) or, with ``--labels``, the order-0 label map of TotalSegmentator-style bundles (``to_input_grid``:
the per-axis gather vs ``ndimage.zoom`` + ``apply_orientation`` + a contiguous copy).

Usage:

    nice -n 5 python benchmarks/resample_back.py [--json /tmp/resample_back.json] [--spacing 1.5] [--classes 22]
    nice -n 5 python benchmarks/resample_back.py --labels [--repeats 5] [--json /tmp/labels_back.json]

The case (issue 21): a 320x260x300 series at 1.19x1.19x1.5 mm (nnU-Net order (300, 260, 320) at (1.5, 1.19,
1.19)); the network grid at ``--spacing`` mm isotropic (1.5 mm: (300, 206, 254)); ``--classes`` logits holding
fp16 values in float32, as the sliding window hands them over. The logits are structured like a segmentation
network's: each organ class a smooth score that is positive inside a random ellipsoid (organs touch and
overlap), the background a constant, all plus a smooth random field and a little fp16-scale noise, so the label
boundaries are surfaces, not white noise. Each route runs in its own process (its own peak RSS) on the same
logits (same seed); the label maps are compared by hash. The band fraction is the share of output voxels that
were resampled class by class.
"""
from __future__ import annotations

import edgeseg  # noqa: F401 - before numpy: the process set-up edgeseg's own commands have (edgeseg/_memory.py)

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, print_table, run_child, write_json  # noqa: E402

INPUT_SHAPE = (300, 260, 320)          # nnU-Net (SimpleITK) order of the 320x260x300 series
INPUT_SPACING = (1.5, 1.19, 1.19)


def network_shape(spacing: float) -> tuple[int, ...]:
    from edgeseg.runtime.resample import compute_new_shape

    return compute_new_shape(INPUT_SHAPE, INPUT_SPACING, (spacing,) * 3)


def make_logits(shape: tuple[int, ...], classes: int, seed: int = 0) -> np.ndarray:
    """(classes, *shape) float32 holding fp16 values: ellipsoid organs in a body, smooth fields, fp16 noise."""
    rng = np.random.default_rng(seed)
    grids = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = (g.reshape([-1 if i == d else 1 for i in range(3)]) for d, g in enumerate(grids))
    out = np.empty((classes, *shape), dtype=np.float32)
    body = 1.0 - ((z / 0.95) ** 2 + (y / 0.8) ** 2 + (x / 0.9) ** 2)  # > 0 inside the body
    out[0] = 4.0 - 12.0 * np.clip(body, 0, None)                         # background: strong outside the body
    for c in range(1, classes):
        centre = rng.uniform(-0.6, 0.6, 3).astype(np.float32)
        radii = rng.uniform(0.2, 0.5, 3).astype(np.float32)
        r2 = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2
        # a smooth field (separable sums of low-frequency waves) wrinkles the surfaces
        wav = sum(np.float32(rng.uniform(0.2, 0.6)) * np.sin(np.float32(rng.uniform(2, 9)) * g
                                                              + np.float32(rng.uniform(0, 6.3)))
                  for g in (z, y, x))
        out[c] = 10.0 * (1.0 - r2) + 1.5 * wav - 2.0
    for c in range(classes):  # a little noise, then fp16 values in float32 (what Aggregated.logits() returns)
        out[c] += rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)
        out[c] = out[c].astype(np.float16)
    return out


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from edgeseg.runtime import resample

    net = network_shape(args.spacing)
    t0 = time.perf_counter()
    logits = make_logits(net, args.classes)
    gen = time.perf_counter() - t0
    fn = resample._argmax_resampled_reference if args.worker == "old" else resample.argmax_resampled
    t0 = time.perf_counter()
    labels = fn(logits, INPUT_SHAPE, (args.spacing,) * 3, INPUT_SPACING, order=1, order_z=0)
    seconds = time.perf_counter() - t0
    route = dict(resample.last_route) if args.worker == "new" else {"route": "brute force", "band_fraction": 1.0}
    counts = np.bincount(labels.ravel(), minlength=args.classes)
    return {"seconds": seconds, "generate_s": gen, "network_shape": list(net), "output_shape": list(labels.shape),
            "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
            "classes_present": int(np.count_nonzero(counts)), "route": route["route"],
            "band_fraction": route["band_fraction"], "peak_rss_mb": peak_rss_mb(),
            "threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


LABEL_CASES = {"512x512x200": ((171, 171, 133), (512, 512, 200)),
               "512x512x400": ((171, 171, 267), (512, 512, 400))}
LPS = np.array([[0, -1], [1, -1], [2, 1]], dtype=float)   # nibabel's io_orientation of an LPS (DICOM) affine


def labels_worker(args: argparse.Namespace) -> dict[str, Any]:
    from edgeseg.bundle.schema import PreResample
    from edgeseg.runtime import postprocess, resample
    from edgeseg.runtime.preprocess import Oriented

    import nibabel  # imported by to_input_grid on its first call: not what is measured

    low, shape = LABEL_CASES[args.case]
    labels = np.random.default_rng(0).integers(0, 51, size=low, dtype=np.uint8)
    pre = PreResample((1.5, 1.5, 1.5), order=1, cast="int32", mode="nearest", order_back=0, header_float32=True)
    oriented = Oriented(np.zeros((1, 1, 1), np.float32), (1.5, 1.5, 1.5), LPS, shape, pre)  # type: ignore[arg-type]

    def before() -> np.ndarray:  # to_input_grid before issue 21
        nib = nibabel
        out = resample._zoom_to_shape_reference(labels, shape, 0, pre.mode)
        back = nib.orientations.ornt_transform(np.array([[0, 1], [1, 1], [2, 1]], dtype=float), LPS)
        return np.ascontiguousarray(nib.orientations.apply_orientation(out, back))

    fn = before if args.worker == "labels-old" else (lambda: postprocess.to_input_grid(labels, oriented))
    times, out = [], None
    for _ in range(args.repeats):
        out = None
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    assert out is not None
    return {"seconds": min(times), "median_s": float(np.median(times)), "input_shape": list(low),
            "output_shape": list(out.shape), "labels_sha256": hashlib.sha256(out.tobytes()).hexdigest(),
            "peak_rss_mb": peak_rss_mb()}


def labels_main(args: argparse.Namespace) -> int:
    me = [str(Path(__file__).resolve()), "--repeats", str(args.repeats)]
    rows: list[dict[str, Any]] = []
    for case in LABEL_CASES:
        pair = []
        for name, which in (("zoom + apply_orientation (before)", "labels-old"), ("gather", "labels-new")):
            result, wall = run_child(me + ["--worker", which, "--case", case])
            result.update(case=case, config=name, process_wall_s=wall)
            pair.append(result)
            print(f"  measured {case} {name}: {result['seconds']:.3f} s", flush=True)
        pair[1]["speedup"] = pair[0]["seconds"] / pair[1]["seconds"]
        for r in pair:
            r["identical"] = pair[0]["labels_sha256"] == pair[1]["labels_sha256"]
        rows += pair
    print(f"\norder-0 label map back to the input grid (uint8, LPS input, mode nearest), best and median of "
          f"{args.repeats}\n")
    print_table(rows, [("case", "input grid"), ("config", "route"), ("seconds", "best s"), ("median_s", "median s"),
                       ("speedup", "speed-up"), ("identical", "identical"), ("peak_rss_mb", "peak RSS MB")])
    write_json(args.json, {"machine": machine(), "case": "labels", "results": rows})
    return 0 if all(r["identical"] for r in rows) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=("old", "new", "labels-old", "labels-new"))
    p.add_argument("--labels", action="store_true", help="the order-0 label map back (TotalSegmentator bundles)")
    p.add_argument("--case", choices=tuple(LABEL_CASES), default="512x512x200")
    p.add_argument("--repeats", type=int, default=5, help="calls per route with --labels (default 5)")
    p.add_argument("--spacing", type=float, default=1.5, help="the network's isotropic spacing, mm (default 1.5)")
    p.add_argument("--classes", type=int, default=22)
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(labels_worker(args) if args.worker.startswith("labels") else worker(args)))
        return 0
    if args.labels:
        return labels_main(args)

    me = [str(Path(__file__).resolve()), "--spacing", str(args.spacing), "--classes", str(args.classes)]
    rows: list[dict[str, Any]] = []
    for name, which in (("brute force (before)", "old"), ("band route", "new")):
        result, wall = run_child(me + ["--worker", which])
        result.update(config=name, process_wall_s=wall)
        rows.append(result)
        print(f"  measured {name}: {result['seconds']:.2f} s", flush=True)
    old, new = rows
    new["speedup"] = old["seconds"] / new["seconds"]
    identical = old["labels_sha256"] == new["labels_sha256"]
    for r in rows:
        r["identical"] = identical
    print(f"\n{args.classes} classes, network grid {tuple(old['network_shape'])} at {args.spacing} mm -> "
          f"{tuple(old['output_shape'])} at {INPUT_SPACING} mm; {old['classes_present']} classes present; "
          f"{new['threads']} cores available\n")
    print_table(rows, [("config", "route"), ("seconds", "seconds"), ("speedup", "speed-up"),
                       ("band_fraction", "band fraction"), ("identical", "labels identical"),
                       ("peak_rss_mb", "peak RSS MB")])
    write_json(args.json, {"machine": machine(), "case": {"input_shape": INPUT_SHAPE, "input_spacing": INPUT_SPACING,
                                                          "network_spacing": args.spacing, "classes": args.classes},
                           "results": rows})
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
