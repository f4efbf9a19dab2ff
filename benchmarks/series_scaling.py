"""Cost that grows linearly: one series per size and input kind, segmented end to end, stage by stage.

Usage:

    python benchmarks/series_scaling.py --work /tmp/edgeseg-scaling                       # demo bundle, all sizes
    python benchmarks/series_scaling.py --sizes 117x91x20,320x260x72 --kinds nifti,dicom --json out.json
    python benchmarks/series_scaling.py --bundle /work/ts_sized_bundle --label ts-sized  # TotalSegmentator-sized

Inputs: the demo MRI (117x91x20 @ 3 mm) resampled (order 1) onto each size: 117x91x20 (the MRI itself),
320x260x72 and 320x260x300 at 1.19x1.19x1.5 mm, 512x512x200 and 512x512x400 at 0.5x0.5x1 mm; as a gzipped
NIfTI and as a classic MR DICOM series (one file per slice). They are made once under ``--work``.

Each row is one series in its own child process (its peak RSS is its own: ``VmHWM``), through
:class:`edgeseg.runtime.segmenter.Segmenter` exactly as ``edgeseg segment`` runs it, with a time budget (so the
planner predicts it; 1e6 s unless ``--budget``), the compiled-model cache and the latency table under ``--work``
shared by the rows (the planner learns its per-stage rates from the rows before, as it would on this PC), and the
default outputs (for DICOM: the DICOM-SEG and SR too). Printed per row: the manifest's seconds per stage (they add
up to the wall time), the planner's prediction and its error, the share of the wall time outside network inference,
each stage's ratio to the inference time, and the peak RSS. ``--warm-up``: each row's set-up runs the watcher's
warm-up (:mod:`edgeseg.runtime.warmup`), so that every row is the first series of a watcher started on this PC:
the prime where it is cheap (the shipped NIfTI, not recorded), then, where the table has no runs of the bundle (a
fresh folder's first row), the shipped MRI as NIfTI and DICOM.
"""
from __future__ import annotations

import edgeseg  # noqa: F401 - before numpy: the process set-up edgeseg's own commands have (edgeseg/_memory.py)

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, print_table, run_child, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MRI = REPO / "edgeseg" / "demo" / "mri" / "example_mr_sm.nii.gz"
DEMO_BUNDLE = REPO / "edgeseg" / "demo" / "bundle"
SIZES = ("117x91x20", "320x260x72", "320x260x300", "512x512x200", "512x512x400")
STAGES = ("read", "plan", "preprocess", "compile", "infer", "resample", "postprocess", "write", "other")


def _spacing(shape: tuple[int, int, int]) -> tuple[float, float, float] | None:
    if shape[0] == 512:
        return (0.5, 0.5, 1.0)
    if shape[0] == 320:
        return (1.19, 1.19, 1.5)
    return None  # the MRI's own


def make_input(work: Path, size: str, kind: str) -> Path:
    """The series of ``size`` ("IxJxK") as ``kind`` ("nifti" or "dicom") under ``work/inputs``, made once."""
    import nibabel as nib

    folder = work / "inputs" / f"{size}-{kind}"
    target = folder / "series.nii.gz" if kind == "nifti" else folder / "series"
    if (folder / "done").is_file():
        return target
    shape = tuple(int(v) for v in size.split("x"))
    img = nib.load(str(MRI))
    src = np.asanyarray(img.dataobj).astype(np.float32)
    spacing = _spacing(shape)  # type: ignore[arg-type]
    if spacing is None and tuple(src.shape) == shape:
        array, affine = src.astype(np.int16), img.affine
    else:
        from scipy import ndimage

        zoom = [n / s for n, s in zip(shape, src.shape)]
        array = np.round(ndimage.zoom(src, zoom, order=1)).astype(np.int16)[: shape[0], : shape[1], : shape[2]]
        sp = spacing or (1.0, 1.0, 1.0)
        affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])
        affine[:3, 3] = [sp[0] * shape[0] / 2, sp[1] * shape[1] / 2, -sp[2] * shape[2] / 2]
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "nifti":
        nib.save(nib.Nifti1Image(array, affine), str(target))
    else:
        from edgeseg.demo.dicom_series import write_dicom_series

        write_dicom_series((array, affine), target, series_description=f"scaling {size}")
    (folder / "done").write_text("ok")
    return target


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from edgeseg.runtime.options import OutputOptions, SegmentOptions
    from edgeseg.runtime.segmenter import Segmenter

    work = Path(args.work)
    outputs = OutputOptions(seg_type=args.seg_type) if args.seg_type else OutputOptions()
    options = SegmentOptions(time_budget_s=args.budget, cache_dir=work / "model_cache", precision=args.precision,
                             outputs=outputs)
    t0 = time.monotonic()
    segmenter = Segmenter(Path(args.bundle), options, latency_path=work / f"latency-{args.label}.json")
    if args.warm:  # the once-per-bundle set-up a watcher or a one-shot task pays before its first series
        from edgeseg.runtime.read import SeriesGeometry, read_series

        volume = read_series(Path(args.input))
        geometry = SeriesGeometry.from_volume(volume)
        # measured without the volume in memory, as a watcher measures (it plans from the headers)
        del volume
        plan = segmenter.plan(geometry, name="warm-up")  # measures missing latencies
        for part in segmenter.bundle.variant(plan.variant if plan else None).parts:
            # compiled, then in the state a watcher keeps it between series: every part's window releases its
            # engine's working memory when it ends (runtime/segment.py), so a series never starts with another
            # part's activations held (compiled and warm here, they would stay held through the first part)
            segmenter.engine(part).release()
    if args.warm_up:  # what a watcher does before its first series (warm_up: prime where cheap, measure where no runs)
        segmenter.warm_up(work / "warm-up")
    setup = time.monotonic() - t0
    with tempfile.TemporaryDirectory(prefix="edgeseg-scaling-") as out:
        t0 = time.monotonic()
        result = segmenter.segment(Path(args.input), out_parent=Path(out))
        wall = time.monotonic() - t0
    manifest = result.manifest
    plan = manifest.get("plan") or {}
    return {"wall_s": wall, "setup_s": setup, "timings": manifest["run"]["timings_s"],
            "write_s": manifest["run"].get("write_s"), "predicted_s": plan.get("predicted_s"),
            "predicted_stages": (plan.get("details") or {}).get("stages"), "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", default=str(DEMO_BUNDLE))
    ap.add_argument("--label", default="demo", help="the bundle's name in the table")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--kinds", default="nifti,dicom")
    ap.add_argument("--budget", type=float, default=1e6, help="time budget per series (the planner predicts it)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeseg-scaling"))
    ap.add_argument("--precision", default="auto", help="SegmentOptions.precision (auto: what export's gate passed)")
    ap.add_argument("--seg-type", choices=("binary", "labelmap"), help="outputs.seg_type (default: the default)")
    ap.add_argument("--warm", action="store_true",
                    help="set the segmenter up before the timed series (compile every part, measure missing tile "
                         "latencies), as a watcher does once per bundle: the row is then one series of a running "
                         "workstation, and the set-up is printed apart")
    ap.add_argument("--warm-up", action="store_true",
                    help="before each row, the watcher's warm-up (edgeseg.runtime.warmup: the shipped NIfTI once, not "
                         "recorded, where cheap; then, where the table has no runs of the bundle yet, as NIfTI and as "
                         "DICOM, recorded), as a watcher does at its start; in the set-up time")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        for kind in args.kinds.split(","):
            t0 = time.perf_counter()
            path = make_input(args.work, size, kind)
            made = time.perf_counter() - t0
            cmd = [__file__, "--worker", "--input", str(path), "--bundle", args.bundle, "--label", args.label,
                   "--budget", str(args.budget), "--work", str(args.work), "--precision", args.precision]
            cmd += (["--seg-type", args.seg_type] if args.seg_type else []) + (["--warm"] if args.warm else [])
            cmd += ["--warm-up"] if args.warm_up else []
            got, _ = run_child(cmd)
            t = got["timings"]
            infer = max(float(t["infer"]), 1e-9)
            total = float(t["total"])
            predicted = got["predicted_s"]
            row = {"bundle": args.label, "size": size, "kind": kind, **{s: t.get(s) for s in STAGES},
                   "total": total, "wall": round(got["wall_s"], 2), "predicted": predicted,
                   "pred_err_pct": None if predicted is None else round(100 * (predicted - total) / total, 1),
                   "non_network_pct": round(100 * (1 - infer / total), 1) if total else None,
                   "resample_x": round(float(t["resample"]) / infer, 2),
                   "write_x": round(float(t["write"]) / infer, 2), "read_x": round(float(t["read"]) / infer, 2),
                   "rss_mb": round(got["peak_rss_mb"]), "write_s": got["write_s"], "setup": round(got["setup_s"], 2),
                   "predicted_stages": got["predicted_stages"]}
            rows.append(row)
            print(f"  {args.label} {size} {kind}: total {total:.1f} s (input made in {made:.0f} s)", flush=True)
    print(f"\nSeries scaling, bundle {args.label} ({args.bundle}); seconds per stage from the manifests; "
          "x = stage / network inference")
    print_table(rows, [("size", "size"), ("kind", "kind"), ("read", "read"), ("plan", "plan"),
                       ("preprocess", "prep"), ("compile", "compile"), ("infer", "infer"), ("resample", "resample"),
                       ("postprocess", "post"), ("write", "write"), ("other", "other"), ("total", "total"),
                       ("wall", "wall"), ("predicted", "predicted"), ("pred_err_pct", "pred err %"),
                       ("non_network_pct", "non-net %"), ("read_x", "read x"), ("resample_x", "resample x"),
                       ("write_x", "write x"), ("rss_mb", "peak RSS MB"), ("setup", "set-up s (apart)")])
    write_json(args.json, {"machine": machine(), "bundle": args.bundle, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
