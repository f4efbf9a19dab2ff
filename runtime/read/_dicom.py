"""DICOM -> :class:`Volume`: discovery of series in a console export, and stacking of one series.

Discovery reads headers only (``stop_before_pixels``), groups instances by SeriesInstanceUID (a series exported
without one, by folder and the identity :func:`~edgeseg.runtime.read.headers.series_identity` derives from its
headers) and keeps image instances: files that are not DICOM (no "DICM" preamble), DICOMDIR, and non-image objects
(SR, PR, KO, SEG, RT structure sets, raw data, spectroscopy, anything without Rows/Columns or without patient
geometry) are skipped.

Reading a series turns every instance into *frames* (one per classic single-frame image; one per frame of an
enhanced multi-frame image, geometry from its Per-frame / Shared Functional Groups) and stacks them:

1. localizer frames (ImageType / FrameType containing LOCALIZER) are dropped; for one 3-D stack of a series that
   holds several (``SeriesRef.stack``: echoes, image types, time points at the same positions), only the frames of
   that stack are kept (:func:`~edgeseg.runtime.read.headers.split_series` found them from the same keys);
2. only the majority geometry is kept: the most frequent (Rows, Columns, ImageOrientationPatient, PixelSpacing)
   (orientation and spacing compared within ``ORIENTATION_TOL`` / ``PIXEL_SPACING_REL_TOL``);
3. frames are ordered by ImagePositionPatient projected on the slice normal n = row cosine x column cosine
   (never by file name or InstanceNumber);
4. the stack must be regular: with ``s`` the median gap between neighbouring positions and
   ``tol = max(SPACING_ABS_TOL_MM, SPACING_REL_TOL * s)`` (0.02 mm or 1 %, whichever is larger), every gap must be
   within ``tol`` of ``s`` and every position within ``tol`` of the straight line from the first to the last.
   Otherwise :class:`InvalidSeriesError` names the series and the reason (missing slices, uneven spacing,
   duplicate positions, all slices at one position, a single slice).

Geometry of the result: ``array[i, j, k]`` is column i, row j of the k-th slice (``pixel_array.T`` per slice),
float32 with RescaleSlope/RescaleIntercept applied. In DICOM's LPS patient space the voxel (i, j, k) lies at
``IPP_0 + i * Δc * row_cos + j * Δr * col_cos + k * step`` with PixelSpacing = [Δr (between rows), Δc (between
columns)] and ``step = (IPP_last - IPP_0) / (K - 1)``; the RAS+ affine negates the first two rows of that LPS
affine. Input files are only ever opened for reading.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.arrays import PLANE_BLOCK, copy_blocked, usable_cores
from edgeseg.runtime.naming import dicom_series_name
from edgeseg.runtime.read.headers import (LOCALIZER_ONLY, NOT_DICOM, REFUSED, Instance, SkippedFiles, _int_or_none,
                                          _is_localizer, _is_multiframe, _str, dicom_geometry, expected_instances,
                                          fg_item, frame_stack_keys, frame_type_localizer, instance_from_header,
                                          non_image_reason, read_dicom_header, series_identity, split_series)
from edgeseg.runtime.read.limits import ReadLimits, check_frames, check_voxels
from edgeseg.runtime.read.selection import SelectionRules, select, series_rule
from edgeseg.runtime.read.series_ref import DICOM, SeriesRef, Skipped, StackKey
from edgeseg.runtime.read.vendor import reversed_rows
from edgeseg.runtime.read.volume import FILE_UID_KEYS, DicomSource, Volume

log = logging.getLogger(__name__)

#: absolute tolerance on slice positions and gaps, mm
SPACING_ABS_TOL_MM = 0.02
#: relative tolerance on slice gaps (fraction of the median gap)
SPACING_REL_TOL = 0.01
#: absolute tolerance on each ImageOrientationPatient direction cosine when grouping frames
ORIENTATION_TOL = 1e-3
#: relative tolerance on PixelSpacing when grouping frames
PIXEL_SPACING_REL_TOL = 1e-3

#: RAS <-> LPS (its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# -------------------------------------------------------------------------------------------- discovery


def discover_dicom(files: Iterable[Path], skipped: SkippedFiles | None = None, echoes: str = "all",
                   selection: SelectionRules | None = None) -> list[SeriesRef]:
    """Group the DICOM image instances among ``files`` into one :class:`SeriesRef` per series.

    Headers only (:mod:`edgeseg.runtime.read.headers`, the rules the watcher's completion tracker uses too): a
    series is a SeriesInstanceUID, or for instances without one a folder and the identity derived from their
    headers (``SeriesRef.series_id``). Non-DICOM files, DICOMDIR and non-image objects are skipped; series made only
    of localizers are skipped (logged at info level); each skipped file is added to ``skipped`` with its reason
    when given. ``SeriesRef.source`` is the folder holding the series' files (their common parent); its
    ``expected_instances`` and ``geometry`` are what the headers announce. A series holding several 3-D stacks at
    the same positions (echoes, image types, time points) gives one ref per stack, or only the first with
    ``echoes="first"`` (:func:`~edgeseg.runtime.read.headers.split_series`). Refs are sorted by (SeriesNumber,
    series identity, stack).

    ``selection``: the selection rules (:func:`~edgeseg.runtime.read.selection.select`; ``echoes`` is then its
    ``multi_volume``): a series or stack a rule skips is logged once and added to ``skipped.by_rule``; refused
    images (a mosaic, no geometry) are grouped into their series first, so that a rule skips a secondary capture or
    a diffusion mosaic before it would be refused.
    """
    skipped = skipped if skipped is not None else SkippedFiles()
    groups: dict[tuple[str, Path | None], list[tuple[Path, Instance]]] = defaultdict(list)
    for path in files:
        ds = read_dicom_header(path)
        if ds is None:
            skipped.add(NOT_DICOM, path)
            continue
        try:
            instance = instance_from_header(ds)
        except ValueError as err:
            log.debug("skipping %s: %s", path, err)
            skipped.add(str(err), path)
            continue
        if instance.non_image is not None and (selection is None or instance.non_image not in REFUSED):
            log.debug("skipping %s: %s", path, instance.non_image)
            skipped.add(instance.non_image, path)
            continue
        groups[(instance.series_id, None if instance.series_uid else path.parent)].append((path, instance))
    refs: list[SeriesRef] = []
    for (series_id, _), members in groups.items():
        if selection is not None:
            hit = series_rule([instance for _, instance in members], selection)
            if hit is not None:
                rule_skip = Skipped(series_id, members[0][1].description, *hit, tuple(sorted(p for p, _ in members)))
                rule_skip.log()
                skipped.by_rule.append(rule_skip)
                continue
            for path, instance in members:
                if instance.non_image is not None:
                    skipped.add(instance.non_image, path)
            members = [(p, i) for p, i in members if i.is_image]
            if not members:
                continue
        if all(instance.is_localizer for _, instance in members):
            log.info("skipping series %s (%s): %s", series_id, members[0][1].description, LOCALIZER_ONLY)
            for path, _ in members:
                skipped.add(LOCALIZER_ONLY, path)
            continue
        members.sort(key=lambda m: str(m[0]))
        instances = [instance for _, instance in members]
        first = next(instance for instance in instances if not instance.is_localizer)
        paths = tuple(p for p, _ in members)
        folder = Path(os.path.commonpath([str(p.parent) for p in paths]))
        ref = SeriesRef(
            kind=DICOM,
            source=folder,
            files=paths,
            uid=first.series_uid or None,
            series_id=series_id,
            description=first.description,
            modality=first.modality,
            series_number=first.series_number,
            expected_instances=expected_instances(instances),
            geometry=dicom_geometry([instance for instance in instances if not instance.is_localizer]),
        )
        if selection is None:
            refs.extend(split_series(ref, members, echoes))
            continue
        chosen = select(ref, members, selection)
        for rule_skip in chosen.skipped:
            rule_skip.log()
            skipped.by_rule.append(rule_skip)
        refs.extend(chosen.refs)
    refs.sort(key=lambda r: (r.series_number if r.series_number is not None else 1 << 30, r.identity or "",
                             r.stack.index if r.stack else -1))
    return refs


# -------------------------------------------------------------------------------------------- frames


@dataclass
class _Frame:
    """One 2-D image plane: from a classic instance (``index`` None) or a frame of a multi-frame instance."""

    path: Path
    index: int | None
    rows: int
    cols: int
    iop: np.ndarray  # (6,) LPS row cosine then column cosine
    ipp: np.ndarray  # (3,) LPS position of the centre of the first transmitted pixel, mm
    pixel_spacing: np.ndarray  # (2,) [between rows, between columns], mm
    slope: float
    intercept: float
    localizer: bool
    sop_uid: str
    #: what tells this frame's stack apart in a series of several
    #: (:func:`~edgeseg.runtime.read.headers.frame_stack_keys`)
    stack_key: StackKey | None = None


def _floats(value: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray([float(v) for v in value], dtype=np.float64)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} has {arr.size} values, expected {n}")
    return arr


def _rescale(item: Any) -> tuple[float, float]:
    if item is None:
        return 1.0, 0.0
    slope = item.get("RescaleSlope", 1.0)
    intercept = item.get("RescaleIntercept", 0.0)
    return float(slope if slope not in (None, "") else 1.0), float(intercept if intercept not in (None, "") else 0.0)


def _frames_of(ds: Any, path: Path) -> list[_Frame]:
    """The frames of one instance, geometry read from its header (no pixel decoding)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    sop_uid = _str(ds, "SOPInstanceUID")
    file_localizer = _is_localizer(ds.get("ImageType"))
    stack_keys = frame_stack_keys(ds)
    if not _is_multiframe(ds):
        slope, intercept = _rescale(ds)
        return [_Frame(
            path=path, index=None, rows=rows, cols=cols,
            iop=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient"),
            ipp=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient"),
            pixel_spacing=_floats(ds.PixelSpacing, 2, "PixelSpacing"),
            slope=slope, intercept=intercept, localizer=file_localizer, sop_uid=sop_uid, stack_key=stack_keys[0],
        )]
    n_frames = _int_or_none(ds, "NumberOfFrames") or 1
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    if len(per_frame) != n_frames:
        raise ValueError(f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {n_frames} frames")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    frames = []
    for f, pf in enumerate(per_frame):
        position = fg_item(pf, shared, "PlanePositionSequence")
        orientation = fg_item(pf, shared, "PlaneOrientationSequence")
        measures = fg_item(pf, shared, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise ValueError(f"frame {f + 1} has no plane position, plane orientation or pixel measures")
        slope, intercept = _rescale(fg_item(pf, shared, "PixelValueTransformationSequence"))
        frames.append(_Frame(
            path=path, index=f, rows=rows, cols=cols,
            iop=_floats(orientation.ImageOrientationPatient, 6, "ImageOrientationPatient"),
            ipp=_floats(position.ImagePositionPatient, 3, "ImagePositionPatient"),
            pixel_spacing=_floats(measures.PixelSpacing, 2, "PixelSpacing"),
            slope=slope, intercept=intercept,
            localizer=file_localizer or frame_type_localizer(pf, shared), sop_uid=sop_uid,
            stack_key=stack_keys[f],
        ))
    return frames


def _same_geometry(a: _Frame, b: _Frame) -> bool:
    return (a.rows == b.rows and a.cols == b.cols
            and bool(np.all(np.abs(a.iop - b.iop) <= ORIENTATION_TOL))
            and bool(np.allclose(a.pixel_spacing, b.pixel_spacing, rtol=PIXEL_SPACING_REL_TOL, atol=1e-6)))


def _majority(frames: list[_Frame]) -> tuple[list[_Frame], list[list[_Frame]]]:
    """Split frames into geometry groups; return the largest group and the others."""
    groups: list[list[_Frame]] = []
    for frame in frames:
        for group in groups:
            if _same_geometry(group[0], frame):
                group.append(frame)
                break
        else:
            groups.append([frame])
    groups.sort(key=len, reverse=True)
    return groups[0], groups[1:]


# -------------------------------------------------------------------------------------------- stacking


def _describe_positions(d: np.ndarray) -> str:
    return ", ".join(f"{x:.2f}" for x in d[:8]) + (" ..." if d.size > 8 else "")


def _stack_geometry(frames: list[_Frame], uid: str, where: Path) -> tuple[list[_Frame], np.ndarray]:
    """Order frames along the slice normal, check the stack is regular, return (ordered frames, RAS affine)."""
    ref = frames[0]
    row_cos, col_cos = ref.iop[:3], ref.iop[3:]
    if abs(np.linalg.norm(row_cos) - 1) > 0.01 or abs(np.linalg.norm(col_cos) - 1) > 0.01 \
            or abs(float(np.dot(row_cos, col_cos))) > 0.01:
        raise InvalidSeriesError(
            f"Series {uid} in {where}: ImageOrientationPatient {ref.iop.tolist()} is not a pair of orthogonal "
            "unit vectors. The series cannot be placed in space; re-export it from the scanner."
        )
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    if len(frames) < 2:
        raise InvalidSeriesError(
            f"Series {uid} in {where} has only one image slice usable as a volume (after dropping localizers "
            "and images of another size or orientation); a 3-D series is needed. Select a 3-D acquisition or "
            "wait until all images of the series have arrived."
        )
    dist = np.array([float(np.dot(f.ipp, normal)) for f in frames])
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    dist = dist[order]
    extent = float(dist[-1] - dist[0])
    if extent <= SPACING_ABS_TOL_MM:
        raise InvalidSeriesError(
            f"Series {uid} in {where}: all {len(frames)} images lie at one position (a cine or dynamic series "
            "of a single slice), so they do not form a 3-D volume. Select a 3-D series."
        )
    gaps = np.diff(dist)
    spacing = float(np.median(gaps))
    tol = max(SPACING_ABS_TOL_MM, SPACING_REL_TOL * spacing)
    if spacing <= tol or np.any(gaps <= tol):
        n_dup = int(np.sum(gaps <= tol))
        raise InvalidSeriesError(
            f"Series {uid} in {where}: {n_dup} image(s) repeat a slice position already present (duplicate "
            "positions: a 4-D series, e.g. diffusion directions or repeated acquisitions, whose headers do not tell "
            "its 3-D stacks apart by echo, image type or time point as edgeseg splits them). edgeseg needs one "
            "image per position; export each volume as its own series."
        )
    bad = np.abs(gaps - spacing) > tol
    if np.any(bad):
        ratios = gaps[bad] / spacing
        if np.all(ratios > 1.5) and np.all(np.abs(ratios - np.round(ratios)) * spacing <= tol):
            missing = int(np.sum(np.round(ratios) - 1))
            where_gap = ", ".join(f"after {dist[i]:.2f} mm" for i in np.flatnonzero(bad)[:5])
            raise InvalidSeriesError(
                f"Series {uid} in {where}: {missing} slice(s) missing ({where_gap} along the slice normal; "
                f"regular spacing {spacing:.3f} mm, {len(frames)} images present). Wait until the transfer has "
                "finished, or send the complete series again."
            )
        raise InvalidSeriesError(
            f"Series {uid} in {where}: uneven slice spacing (gaps between {gaps.min():.3f} and {gaps.max():.3f} mm, "
            f"tolerance ±{tol:.3f} mm around {spacing:.3f} mm); positions {_describe_positions(dist)}. edgeseg "
            "only reads regularly spaced stacks; resample the series on the scanner or convert it to NIfTI first."
        )
    first, last = frames[0].ipp, frames[-1].ipp
    step = (last - first) / (len(frames) - 1)
    expected = first[None, :] + np.arange(len(frames))[:, None] * step[None, :]
    residual = float(np.max(np.linalg.norm(np.stack([f.ipp for f in frames]) - expected, axis=1)))
    if residual > tol:
        raise InvalidSeriesError(
            f"Series {uid} in {where}: the slice positions do not lie on one straight line (deviation "
            f"{residual:.3f} mm > {tol:.3f} mm), e.g. a variable in-plane shift between slices. edgeseg cannot "
            "represent it as one volume; convert the series with a tool that resamples it."
        )
    d_row, d_col = ref.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cos * d_col  # i runs along a row, i.e. across columns
    lps[:3, 1] = col_cos * d_row  # j runs down a column, i.e. across rows
    lps[:3, 2] = step
    lps[:3, 3] = first
    return frames, LPS_TO_RAS @ lps


def planes_from_affine(affine: np.ndarray, n_slices: int) -> dict[str, Any]:
    """The DICOM plane geometry of a voxel grid: the inverse of the stacking in :func:`read_dicom_series`.

    ``affine`` maps (i, j, k, 1) to RAS+ mm; slice k is the plane ``array[:, :, k]`` shown as ``.T``. Returns
    ``iop`` (6 floats: LPS row cosine = direction of i, column cosine = direction of j), ``pixel_spacing``
    ([between rows = |j step|, between columns = |i step|] mm), ``positions`` ((K, 3) LPS ImagePositionPatient
    of slice k), ``normal`` (row x column cosine) and ``slice_spacing`` (|k step . normal| mm).
    Raises ValueError if the i and j axes are not orthogonal (DICOM cannot shear a plane) or k lies in the plane.
    """
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    ci, cj, ck = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    d_col, d_row = float(np.linalg.norm(ci)), float(np.linalg.norm(cj))
    row_cos, col_cos = ci / d_col, cj / d_row
    if abs(float(np.dot(row_cos, col_cos))) > 1e-6:
        raise ValueError("the affine's i and j axes are not orthogonal; DICOM cannot represent that plane")
    normal = np.cross(row_cos, col_cos)
    slice_spacing = abs(float(np.dot(ck, normal)))
    if slice_spacing < 1e-6:
        raise ValueError("the affine's k axis lies in the slice plane")
    positions = lps[:3, 3][None, :] + np.arange(n_slices)[:, None] * ck[None, :]
    return {
        "iop": [float(v) for v in (*row_cos, *col_cos)],
        "pixel_spacing": [d_row, d_col],
        "positions": positions,
        "normal": normal,
        "slice_spacing": slice_spacing,
    }


class _SlicePlacer:
    """Puts decoded slices ((rows, cols), in k order) into the (cols, rows, K) float32 volume: a slice goes in
    transposed, K its fastest axis, so each of its pixels lands in another cache line (~1.0 s for 400 slices of
    512x512 in one numpy assignment). Slices are gathered as they come into a (``CHUNK``, rows, cols) float32
    buffer (the conversion to float32 is the assignment's, as before) and each chunk is copied in by
    :func:`~edgeseg.runtime.arrays.copy_blocked` on the process's cores (0.56 s for the same 400 slices on the
    2-core machine when each thread made one strided copy of its range, 0.21 s in blocks; the same values: the
    copy is exact)."""

    CHUNK = 32

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        n_i, rows, n_k = array.shape
        self.buffer = np.empty((min(self.CHUNK, max(1, n_k)), rows, n_i), dtype=np.float32)
        self.threads = usable_cores()
        self.k = 0  # slices put so far
        self.held = 0  # of them in the buffer

    def put(self, pixels: np.ndarray) -> None:
        self.buffer[self.held] = pixels
        self.held += 1
        self.k += 1
        if self.held == len(self.buffer):
            self.flush()

    def flush(self) -> None:
        if not self.held:
            return
        k0, n = self.k - self.held, self.held
        copy_blocked(self.array[:, :, k0:k0 + n], self.buffer[:n].transpose(2, 1, 0), PLANE_BLOCK, self.threads)
        self.held = 0

    def __enter__(self) -> _SlicePlacer:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.flush()


def _decode_error(uid: str, path: Path, ds: Any, err: BaseException) -> InvalidSeriesError:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    ts_name = getattr(ts, "name", str(ts))
    return InvalidSeriesError(
        f"Series {uid}: the images in {path} are compressed as {ts_name} ({ts}), which edgeseg cannot "
        "decompress. On the scanner or PACS, export the series again uncompressed (Explicit VR Little Endian) or as "
        "JPEG Lossless, JPEG-LS or JPEG 2000, and send it again. For the administrator: edgeseg decodes with "
        "pydicom's plugins gdcm (python-gdcm), pyjpegls and pillow, installed with it (see the README, 'Compressed "
        f"DICOM'); the decoder said: {type(err).__name__}: {err}"
    )


def read_dicom_series(ref: SeriesRef, limits: ReadLimits | None = None) -> Volume:
    """Read one DICOM series (a :class:`SeriesRef` from discovery) into a :class:`Volume`.

    See the module docstring for how frames are selected, ordered and checked. ``Volume.dicom_files`` holds the
    source instances in k order (one file for an enhanced multi-frame image); ``Volume.dicom`` holds
    ``frames`` (per k: (path, frame index or None)), ``sop_instance_uids`` (per k), ``slice_spacing_mm``,
    ``excluded`` (reason -> count) and a few identifying header values. ``limits``: the series' frames and voxels
    (from the headers) must stay within them, checked before any pixel is decoded (:class:`SeriesTooLargeError`).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    uid = ref.uid or f"'{ref.description}' (exported without SeriesInstanceUID)"
    where = ref.source
    datasets: dict[Path, Any] = {}
    frames: list[_Frame] = []
    excluded: dict[str, int] = defaultdict(int)
    for path in ref.files:
        try:
            ds = pydicom.dcmread(os.fspath(path), force=False)
        except InvalidDicomError:
            log.debug("not a DICOM file any more, skipped: %s", path)
            excluded["not DICOM"] += 1
            continue
        except Exception as err:
            log.warning("series %s: could not read %s (%s: %s); skipped", uid, path, type(err).__name__, err)
            excluded["unreadable file"] += 1
            continue
        try:
            identity = series_identity(ds)
        except ValueError:
            identity = None
        if ref.identity is not None and identity != ref.identity:
            log.warning("series %s: %s now belongs to another series; skipped", uid, path)
            excluded["other series"] += 1
            continue
        reason = non_image_reason(ds)
        if reason is None and not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            reason = "no pixel data"
        if reason is not None:
            log.debug("series %s: skipping %s: %s", uid, path, reason)
            excluded[reason] += 1
            continue
        try:
            new = _frames_of(ds, path)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as err:
            log.warning("series %s: %s has unusable geometry (%s); skipped", uid, path, err)
            excluded["unusable geometry"] += 1
            continue
        datasets[path] = ds
        frames.extend(new)
    if not frames:
        raise InvalidSeriesError(
            f"Series {uid} in {where}: none of its {len(ref.files)} file(s) is a readable image with patient "
            "geometry. Check that the export is complete and holds image data (not only reports or raw data)."
        )
    kept = [f for f in frames if not f.localizer]
    if len(kept) < len(frames):
        excluded["localizer"] += len(frames) - len(kept)
    if not kept:
        raise InvalidSeriesError(
            f"Series {uid} in {where} holds only localizer images, which are not a 3-D volume. Select the "
            "diagnostic 3-D series instead."
        )
    if ref.stack is not None:  # one 3-D stack of a series holding several (echoes, image types, time points)
        in_stack = [f for f in kept if f.stack_key == ref.stack.key]
        if len(in_stack) < len(kept):
            excluded[f"other stack than {ref.stack.label}"] += len(kept) - len(in_stack)
        if not in_stack:
            raise InvalidSeriesError(
                f"Series {uid} in {where}: none of its images belongs to {ref.stack.description} any more (the files "
                "changed since the series was found). Send the series again."
            )
        kept = in_stack
    kept, others = _majority(kept)
    for group in others:
        excluded[f"other matrix/orientation ({group[0].rows}x{group[0].cols})"] += len(group)
        log.info("series %s: %d image(s) of another matrix or orientation (%dx%d) not stacked", uid, len(group),
                 group[0].rows, group[0].cols)
    check_frames(len(kept), f"Series {uid} in {where}", limits)
    check_voxels((kept[0].cols, kept[0].rows, len(kept)), f"Series {uid} in {where}", limits)
    ordered, affine = _stack_geometry(kept, uid, where)

    rows, cols = ordered[0].rows, ordered[0].cols
    array = np.empty((cols, rows, len(ordered)), dtype=np.float32)
    flipped = 0
    with _SlicePlacer(array) as placer:
        for frame in ordered:
            ds = datasets[frame.path]
            try:  # decodes one frame, without caching the array in the dataset
                pixels = np.asarray(pixel_array(ds, index=frame.index))
            except Exception as err:
                raise _decode_error(uid, frame.path, ds, err) from err
            if frame.index is None and reversed_rows(ds, f"Series {uid} in {where}, {frame.path.name}"):
                pixels = pixels[::-1, :]  # GE epi_pepolar: rows stored reversed (runtime/read/vendor.py, as dcm2niix)
                flipped += 1
            if pixels.shape != (rows, cols):
                raise InvalidSeriesError(
                    f"Series {uid}: the pixel data of {frame.path} has shape {pixels.shape}, but its header says "
                    f"{rows} rows x {cols} columns. The file is damaged; export the series again."
                )
            if frame.slope != 1.0 or frame.intercept != 0.0:
                placer.put(pixels.astype(np.float64) * frame.slope + frame.intercept)
            else:
                placer.put(pixels)
            if frame.index is None:  # free the encoded bytes (in memory only; the file is untouched)
                del ds.PixelData
    if 0 < flipped < len(ordered):
        raise InvalidSeriesError(
            f"Series {uid} in {where}: {flipped} of its {len(ordered)} stacked images are GE reverse-polarity EPI "
            "images stored with reversed rows and the others are not, so they do not form one volume. Segment the "
            "forward and the reversed volumes as separate series.")
    if flipped:
        log.info("series %s: GE epi_pepolar reverse-polarity images: rows reversed back, as dcm2niix does "
                 "((0019,109C) epi_pepolar, (0019,10B3))", uid)
    first_ds = datasets[ordered[0].path]
    description = _str(first_ds, "SeriesDescription") or ref.description
    dicom_files = list(dict.fromkeys(frame.path for frame in ordered))  # each file once, in k order
    spacing = float(np.linalg.norm(affine[:3, 2]))
    source = DicomSource(
        frames=tuple((f.path, f.index) for f in ordered),
        sop_instance_uids=tuple(f.sop_uid for f in ordered),
        file_uids=tuple(tuple(_str(datasets[path], key) for key in FILE_UID_KEYS) for path in dicom_files),
        multiframe=ordered[0].index is not None,
        slice_spacing_mm=spacing,
        excluded=dict(excluded),
        modality=_str(first_ds, "Modality"),
        study_instance_uid=_str(first_ds, "StudyInstanceUID"),
        frame_of_reference_uid=_str(first_ds, "FrameOfReferenceUID"),
        series_number=_int_or_none(first_ds, "SeriesNumber"),
        transfer_syntax_uid=str(getattr(getattr(first_ds, "file_meta", None), "TransferSyntaxUID", "")),
        stack=ref.stack.to_dict() if ref.stack else None,
        rows_reversed=bool(flipped),
    )
    if excluded:
        log.info("series %s: not stacked: %s", uid, dict(excluded))
    vol = Volume(
        array=array,
        affine=affine,
        source=where,
        kind="dicom",
        name=dicom_series_name(description, ref.identity or "", ref.stack.label if ref.stack else None),
        series_uid=ref.uid,
        series_id=ref.identity,
        stack=ref.stack.label if ref.stack else None,
        description=description,
        dicom_files=tuple(dicom_files),
        dicom=source,
    )
    log.info("read DICOM series %s (%s) from %s: shape %s, spacing %s", uid, description, where, vol.shape,
             tuple(round(s, 4) for s in vol.spacing))
    return vol
