"""A fake segmenter for tests and for measuring the watcher's own overhead. No model runs.

It checks its input the way the reader is specified to (every DICOM instance readable with complete pixel
data, slices evenly spaced; a NIfTI that opens) and raises :class:`~edgeseg.errors.InvalidSeriesError`
otherwise, then writes a dummy ``<name>.edgeseg/`` folder beside the series with the writer's own
:class:`~edgeseg.runtime.write.atomic.ResultFolder` (partial folder, then renames), so a kill at any moment
leaves either no result or a complete one. ``manifest.json`` records the input fingerprint and file list, which tests compare with the inputs.

Selected in a watcher process by the environment variable ``EDGESEG_WATCH_SEGMENTER=fake`` or
``fake:<seconds>`` (sleep that long inside, to widen the window a kill test can hit). A test hook: the watcher
logs a warning when it is active.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import numpy as np

from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.read import DICOM, NIFTI, fingerprint, stamp_files
from edgeseg.runtime.watch.jobs import SeriesJob
from edgeseg.runtime.write.atomic import ResultFolder

log = logging.getLogger(__name__)

ENV_VAR = "EDGESEG_WATCH_SEGMENTER"


def _check_dicom(job: SeriesJob) -> None:
    import pydicom

    positions = []
    normal = None
    for path in job.image_files or job.files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as err:  # noqa: BLE001
            raise InvalidSeriesError(f"Series {job.series_uid}: {path.name} is not readable DICOM ({err}). "
                                     "Re-export the series from the scanner.") from err
        if "PixelData" not in ds or "Rows" not in ds:
            continue
        bits = int(ds.get("BitsAllocated", 16))
        need = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1) * int(
            ds.get("SamplesPerPixel", 1)) * bits // 8
        if len(ds.PixelData) < need:
            raise InvalidSeriesError(f"Series {job.series_uid}: {path.name} is truncated ({len(ds.PixelData)} of "
                                     f"{need} pixel bytes). Re-export the series from the scanner.")
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            iop = np.array([float(x) for x in ds.ImageOrientationPatient])
            normal = np.cross(iop[:3], iop[3:])
            positions.append(float(np.dot(normal, [float(x) for x in ds.ImagePositionPatient])))
    if not positions:
        raise InvalidSeriesError(f"Series {job.series_uid} has no image with a position; it is not a 3-D volume.")
    if len(positions) > 2:
        gaps = np.diff(np.sort(positions))
        if gaps.min() <= 1e-3 or gaps.max() > 1.5 * np.median(gaps):
            raise InvalidSeriesError(
                f"Series {job.series_uid}: slices are not evenly spaced (gaps {gaps.min():.2f}..{gaps.max():.2f} mm), "
                "a slice is missing or duplicated. Re-send the complete series.")


def _check_nifti(job: SeriesJob, limits: Any = None) -> None:
    import nibabel as nib

    from edgeseg.runtime.read.limits import check_nifti_file

    if job.kind == NIFTI:
        check_nifti_file(job.source, limits)  # the reader's own bounds: header promises, gzip stream, trailing data
    try:
        img: Any = nib.load(str(job.source))
        np.asarray(img.dataobj[..., 0] if len(img.shape) > 3 else img.dataobj)
    except Exception as err:  # noqa: BLE001
        raise InvalidSeriesError(f"{job.source.name} does not open as an image ({err}). Copy it again.") from err


def fake_segment(source: SeriesJob, bundle: Any, options: Any, progress: Callable[[str, float], None] | None = None,
                 plan: dict[str, Any] | None = None, delay_s: float = 0.0) -> Any:
    """Check ``source`` like a reader, wait ``delay_s``, write a dummy result; returns a SegmentResult."""
    from edgeseg.runtime.segment import SegmentResult

    job = source
    if progress:
        progress("read", 0.0)
    if job.kind == DICOM:
        _check_dicom(job)
    else:
        _check_nifti(job, getattr(options, "limits", None))
    if delay_s:
        steps = max(1, int(delay_s / 0.05))
        for i in range(steps):
            time.sleep(delay_s / steps)
            if progress:
                progress("infer", (i + 1) / steps)
    stamps = stamp_files(job.folder, job.files)
    manifest = {
        "writer": "edgeseg.runtime.watch.fake",
        "series_key": job.key,
        "series_uid": job.series_uid,
        "input_fingerprint": fingerprint(stamps),
        "inputs": [[s.rel, s.size, s.mtime_ns] for s in stamps],
        "device": getattr(options, "device", None),
        "variant": getattr(options, "variant", None),
        "tile_step_size": getattr(options, "tile_step_size", None),
        "plan": plan,
        "written_at": time.time(),
    }

    with ResultFolder(job.folder, job.name, owner=job.key) as folder:
        (folder.path / "labels.txt").write_text("0 background\n", encoding="utf-8")
        with open(folder.path / "manifest.json", "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
    out = folder.final_path
    if progress:
        progress("write", 1.0)
    return SegmentResult(out, {"manifest": out / "manifest.json", "labels": out / "labels.txt"}, manifest)


def from_env(value: str | None = None) -> Callable[..., Any] | None:
    """The segmenter the test hook names (``fake`` or ``fake:<seconds>``), or None when the hook is unset."""
    value = os.environ.get(ENV_VAR, "") if value is None else value
    if not value:
        return None
    kind, _, arg = value.partition(":")
    if kind != "fake":
        raise ValueError(f"{ENV_VAR}={value!r}: only 'fake' or 'fake:<seconds>' is known")
    delay = float(arg) if arg else 0.0

    def segmenter(source: SeriesJob, bundle: Any, options: Any,
                  progress: Callable[[str, float], None] | None = None, plan: dict[str, Any] | None = None) -> Any:
        return fake_segment(source, bundle, options, progress, plan, delay)

    segmenter.__name__ = f"fake_segment(delay={delay})"
    return segmenter
