"""DICOM-SEG BINARY vs LABELMAP: file size, frame count and write time of a 50-structure SEG on a 300-slice series.

Usage:

    python benchmarks/dicomseg_types.py                        # 320x260x300 series, 50 structures, 3 repeats
    python benchmarks/dicomseg_types.py --slices 300 --repeats 3 --json /tmp/dicomseg_types.json

The series is the real demo MRI (117x91x20 @ 3 mm) resampled (order 1) onto a 320x260 x ``--slices`` grid at
1.19x1.19x1.5 mm (a whole-abdomen-and-pelvis MR stack), written as a classic MR DICOM series. The label map holds
all 50 total_mr structures as ellipsoids of organ-like sizes (5-40 cm along the slices, seeded), so BINARY has
to store each structure on every slice it spans (the frame count BINARY viewers load), LABELMAP one frame per
slice. Write time: :func:`edgeseg.runtime.write.write_dicom_seg` (highdicom builds and encodes the SEG, then saves
it), best of ``--repeats``, in this process; read-back time: ``highdicom.seg.segread`` + ``get_volume``.
"""
from __future__ import annotations

import edgeseg  # noqa: F401 - before numpy: the process set-up edgeseg's own commands have (edgeseg/_memory.py)

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MRI = REPO / "edgeseg" / "demo" / "mri" / "example_mr_sm.nii.gz"
LABELS = REPO / "edgeseg" / "demo" / "mri" / "total_mr_labels.json"


def _series(out: Path, slices: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """A classic MR series of ``slices`` slices made from the demo MRI; returns (folder, array, affine)."""
    import nibabel as nib
    from scipy import ndimage

    from edgeseg.demo.dicom_series import write_dicom_series

    img = nib.load(str(MRI))
    src = np.asanyarray(img.dataobj).astype(np.float32)
    shape = (320, 260, slices)
    zoom = [n / s for n, s in zip(shape, src.shape)]
    array = np.round(ndimage.zoom(src, zoom, order=1)).astype(np.int16)[: shape[0], : shape[1], : shape[2]]
    affine = np.diag([-1.19, -1.19, 1.5, 1.0])
    affine[:3, 3] = [190.0, 155.0, -225.0]
    write_dicom_series((array, affine), out, series_description="benchmark 300-slice")
    return out, array, affine


def _phantom(shape: tuple[int, int, int], n_labels: int, seed: int = 0) -> np.ndarray:
    """``n_labels`` ellipsoids (labels 1..n) of organ-like extents; later labels overwrite earlier ones."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    ii, jj, kk = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for value in range(1, n_labels + 1):
        radius = np.array([rng.uniform(8, 40), rng.uniform(8, 35), rng.uniform(17, 133)])  # voxels: 1-5 cm, 5-40 cm
        centre = np.array([rng.uniform(r, s - r) for r, s in zip(np.minimum(radius, np.array(shape) / 2), shape)])
        inside = (((ii - centre[0]) / radius[0]) ** 2 + ((jj - centre[1]) / radius[1]) ** 2
                  + ((kk - centre[2]) / radius[2]) ** 2) <= 1.0
        lab[inside] = value
    return lab


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, help="folder for the series and SEGs (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write the results (with machine and settings) here")
    args = ap.parse_args(argv)

    import highdicom as hd
    import pydicom

    from edgeseg.runtime.read import read_series
    from edgeseg.runtime.write import write_dicom_seg

    labels = {int(k): v for k, v in json.loads(LABELS.read_text(encoding="utf-8")).items()}
    with tempfile.TemporaryDirectory(prefix="edgeseg-segbench-") as tmp:
        work = args.work or Path(tmp)
        folder, array, _ = _series(work / "series", args.slices)
        volume = read_series(folder)
        labelmap = _phantom(volume.shape, len(labels))
        n_present = len([v for v in np.unique(labelmap) if v > 0])
        rows = []
        for seg_type in ("BINARY", "LABELMAP"):
            path = work / f"{seg_type.lower()}.dcm"
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                write_dicom_seg(path, volume, labelmap, labels, segmentation_type=seg_type)
                times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            hd.seg.segread(str(path)).get_volume(combine_segments=True)
            read_s = time.perf_counter() - t0
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            segments = sum(1 for item in ds.SegmentSequence if int(item.SegmentNumber) > 0)  # not "Background"
            rows.append({"type": seg_type, "segments": segments, "frames": int(ds.NumberOfFrames),
                         "size_mb": round(path.stat().st_size / 1e6, 2), "write_s": round(min(times), 2),
                         "read_s": round(read_s, 2)})
    print(f"DICOM-SEG of {n_present} structures on a {volume.shape[0]}x{volume.shape[1]}x{volume.shape[2]} "
          f"series ({args.slices} slices), best of {args.repeats} writes")
    print_table(rows, [("type", "type"), ("segments", "segments"), ("frames", "frames"), ("size_mb", "size MB"),
                       ("write_s", "write s"), ("read_s", "read-back s")])
    if args.json:
        write_json(args.json, {"machine": machine(), "settings": {"slices": args.slices, "repeats": args.repeats,
                                                                    "shape": list(volume.shape)}, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
