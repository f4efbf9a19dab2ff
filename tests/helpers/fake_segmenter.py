"""A fake segmenter for the watcher's tests and for measuring the watcher's own overhead. No model runs.

It checks its input the way the reader is specified to (every DICOM instance readable with complete pixel
data, slices evenly spaced; a NIfTI that opens) and raises :class:`~edgeseg.errors.InvalidSeriesError`
otherwise, then writes a dummy ``<name>.edgeseg/`` folder beside the series with the writer's own
:class:`~edgeseg.runtime.write.atomic.ResultFolder` (partial folder, then renames), so a kill at any moment
leaves either no result or a complete one. ``manifest.json`` records the input fingerprint and file list, which
tests compare with the inputs.

The product has no switch for it: tests inject it, ``Watcher(config, FakeSegmenter())`` in-process, or
:func:`use_fake_watcher` for the command line (``edgeseg watch`` / ``demo`` build their own watcher), and
``tests/helpers/fake_watcher.py`` runs the command line as a process with it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.options import SegmentOptions
from edgeseg.runtime.plan import Plan, Planner
from edgeseg.runtime.read import DICOM, NIFTI, SeriesRef, fingerprint, stamp_files
from edgeseg.runtime.read.limits import ReadLimits, check_nifti_file
from edgeseg.runtime.segment import Timings
from edgeseg.runtime.segmenter import Checkpoint, SeriesSegmenter, Source
from edgeseg.runtime.watch import service
from edgeseg.runtime.watch.config import WatchConfig
from edgeseg.runtime.write import SegmentResult
from edgeseg.runtime.write.atomic import ResultFolder

if TYPE_CHECKING:  # benchmarks/watch_burst.py imports this module without pytest
    import pytest

ProgressCallback = Callable[[str, float], None]


def _check_dicom(ref: SeriesRef) -> None:
    import pydicom

    positions = []
    normal = None
    for path in ref.files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as err:  # noqa: BLE001
            raise InvalidSeriesError(f"Series {ref.uid}: {path.name} is not readable DICOM ({err}). "
                                     "Re-export the series from the scanner.") from err
        if "PixelData" not in ds or "Rows" not in ds:
            continue
        bits = int(ds.get("BitsAllocated", 16))
        need = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1) * int(
            ds.get("SamplesPerPixel", 1)) * bits // 8
        if len(ds.PixelData) < need:
            raise InvalidSeriesError(f"Series {ref.uid}: {path.name} is truncated ({len(ds.PixelData)} of "
                                     f"{need} pixel bytes). Re-export the series from the scanner.")
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            iop = np.array([float(x) for x in ds.ImageOrientationPatient])
            normal = np.cross(iop[:3], iop[3:])
            positions.append(float(np.dot(normal, [float(x) for x in ds.ImagePositionPatient])))
    if not positions:
        raise InvalidSeriesError(f"Series {ref.uid} has no image with a position; it is not a 3-D volume.")
    if len(positions) > 2:
        gaps = np.diff(np.sort(positions))
        if gaps.min() <= 1e-3 or gaps.max() > 1.5 * np.median(gaps):
            raise InvalidSeriesError(
                f"Series {ref.uid}: slices are not evenly spaced (gaps {gaps.min():.2f}..{gaps.max():.2f} mm), "
                "a slice is missing or duplicated. Re-send the complete series.")


def _check_nifti(ref: SeriesRef, limits: ReadLimits | None = None) -> None:
    import nibabel as nib

    if ref.kind == NIFTI:
        check_nifti_file(ref.source, limits)  # the reader's own bounds: header promises, gzip stream, trailing data
    try:
        img: Any = nib.load(str(ref.source))
        np.asarray(img.dataobj[..., 0] if len(img.shape) > 3 else img.dataobj)
    except Exception as err:  # noqa: BLE001
        raise InvalidSeriesError(f"{ref.source.name} does not open as an image ({err}). Copy it again.") from err


def fake_segment(ref: SeriesRef, options: SegmentOptions, progress: ProgressCallback | None = None,
                 plan: Plan | None = None, delay_s: float = 0.0) -> SegmentResult:
    """Check ``ref`` like a reader, wait ``delay_s`` (reporting progress), write a dummy result."""
    if progress:
        progress("read", 0.0)
    if ref.kind == DICOM:
        _check_dicom(ref)
    else:
        _check_nifti(ref, options.limits)
    if delay_s:
        steps = max(1, int(delay_s / 0.05))
        for i in range(steps):
            time.sleep(delay_s / steps)
            if progress:
                progress("infer", (i + 1) / steps)
    stamps = stamp_files(ref.folder, ref.files)
    manifest = {
        "writer": "tests/helpers/fake_segmenter.py",
        "series_key": ref.key,
        "series_uid": ref.uid,
        "input_fingerprint": fingerprint(stamps),
        "inputs": [[s.rel, s.size, s.mtime_ns] for s in stamps],
        "device": options.device,
        "variant": options.variant,
        "tile_step_size": options.tile_step_size,
        "plan": plan.to_dict() if plan is not None else None,
        "written_at": time.time(),
    }

    with ResultFolder(ref.folder, ref.name, owner=ref.key) as folder:
        (folder.path / "labels.txt").write_text("0 background\n", encoding="utf-8")
        with open(folder.path / "manifest.json", "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
    out = folder.final_path
    if progress:
        progress("write", 1.0)
    return SegmentResult(out, {"manifest": out / "manifest.json", "labels": out / "labels.txt"}, manifest)


class FakeSegmenter(SeriesSegmenter):
    """The fake as a segmenter for ``Watcher(config, segmenter)``: the segmenter's policies (plan, time ceiling,
    stop requests, out of memory) around :func:`fake_segment`, which sleeps ``delay_s`` inside each series (to widen
    the window a kill test can hit). ``options``/``ceiling_s``/``planner`` as :class:`SeriesSegmenter`'s."""

    def __init__(self, delay_s: float = 0.0, options: SegmentOptions | None = None, *, ceiling_s: float | None = None,
                 planner: Planner | None = None) -> None:
        super().__init__(options, ceiling_s=ceiling_s, planner=planner)
        self.delay_s = delay_s
        self.name = f"fake_segment(delay={delay_s})"

    def _segment(self, source: Source, options: SegmentOptions, out_parent: Path | None, plan: Plan | None,
                 checkpoint: Checkpoint, timings: Timings) -> SegmentResult:
        if not isinstance(source, SeriesRef):
            raise TypeError(f"the fake segments series found on disk, not {type(source).__name__}")
        return fake_segment(source, options, checkpoint, plan, self.delay_s)


def fake_watcher_class(delay_s: float = 0.0) -> type[service.Watcher]:
    """A :class:`~edgeseg.runtime.watch.service.Watcher` whose segmenter is a :class:`FakeSegmenter` unless one is
    given: what the command line builds once it replaces ``service.Watcher``."""

    class FakeWatcher(service.Watcher):
        def __init__(self, config: WatchConfig, segmenter: SeriesSegmenter | None = None, **kwargs: Any) -> None:
            super().__init__(config, segmenter or FakeSegmenter(delay_s, config.segment_options(),
                                                                ceiling_s=config.time_ceiling_s), **kwargs)

    return FakeWatcher


def use_fake_watcher(monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0) -> None:
    """For the rest of the test, ``edgeseg watch`` and ``edgeseg demo`` (in-process ``main``) segment with the fake."""
    monkeypatch.setattr(service, "Watcher", fake_watcher_class(delay_s))
