"""A BINARY SEG (and its SR) rendered from a stored result, for a destination that does not take Label Map
Segmentation Storage.

The watcher writes ``seg.dcm`` in the configured ``outputs.seg_type``. When that is ``labelmap`` and a destination
accepts only Segmentation Storage (Orthanc 1.10, DCMTK 3.6.7: the association does not accept the label-map
context), the delivery worker asks :func:`binary_variant` for ``seg.binary.dcm`` and ``sr.binary.dcm`` beside it:

* the source series is read again from the result's manifest (``series.source``, ``series.series_uid``,
  ``series.stack``) with the reader that segmented it, so the geometry and the source references are those of
  ``seg.dcm``;
* the mask is ``seg.nii.gz`` (the same grid), the label names ``seg.labels.json``;
* the SEG is written by :func:`~edgeseg.runtime.write.write_dicom_seg` with type BINARY and the manifest's
  ``bundle``/``run`` records: its UIDs are the ones a ``seg_type: binary`` run writes (deterministic, so a re-send
  is deduplicated by the PACS); the SR (:func:`~edgeseg.runtime.write.write_dicom_sr`) measures and references
  exactly that SEG.

Both files are written under a hidden name and renamed into place, SR last; a pair already there is reused.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BINARY_SEG_FILE = "seg.binary.dcm"
BINARY_SR_FILE = "sr.binary.dcm"


@dataclass(frozen=True)
class BinaryVariant:
    """The rendered pair (``sr`` None when the result has no SR)."""

    seg: Path
    seg_uid: str
    sr: Path | None
    sr_uid: str | None


def _uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def binary_variant(result_dir: Path) -> BinaryVariant:
    """The BINARY SEG and SR of the result in ``result_dir`` (rendered once, then reused). Raises
    :class:`~edgeseg.errors.OutputError` when it cannot be made (sources moved away, result incomplete)."""
    from edgeseg.errors import OutputError
    from edgeseg.runtime.write.dicomseg import DICOM_SEG_FILE
    from edgeseg.runtime.write.manifest import MANIFEST_FILE
    from edgeseg.runtime.write.sr import DICOM_SR_FILE

    seg_path, sr_path = result_dir / BINARY_SEG_FILE, result_dir / BINARY_SR_FILE
    want_sr = (result_dir / DICOM_SR_FILE).is_file()
    if seg_path.is_file() and (sr_path.is_file() or not want_sr):
        try:
            return BinaryVariant(seg_path, _uid(seg_path), sr_path if want_sr else None,
                                 _uid(sr_path) if want_sr else None)
        except Exception as err:  # noqa: BLE001 - a damaged rendering is made again
            log.info("binary SEG in %s unreadable (%s): rendering it again", result_dir, err)
    if not (result_dir / DICOM_SEG_FILE).is_file():
        raise OutputError(f"{result_dir} holds no {DICOM_SEG_FILE}: there is no result to render a BINARY SEG from")
    try:
        manifest: dict[str, Any] = json.loads((result_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        return _render(result_dir, manifest, want_sr)
    except OutputError:
        raise
    except Exception as err:  # noqa: BLE001 - reported on the delivery, with what to do
        raise OutputError(f"Cannot render a BINARY DICOM-SEG from the result in {result_dir}: {type(err).__name__}: "
                          f"{err}. Fix: keep the source series where it was segmented from, or set "
                          "outputs.seg_type: binary and send the series again") from err


def _render(result_dir: Path, manifest: dict[str, Any], want_sr: bool) -> BinaryVariant:
    import nibabel as nib
    import numpy as np

    from edgeseg.runtime.read import discover_series, read_series
    from edgeseg.runtime.write import read_label_map, write_dicom_seg, write_dicom_sr
    from edgeseg.runtime.write.atomic import write_path_atomic
    from edgeseg.runtime.write.nifti import LABELMAP_FILE
    from edgeseg.runtime.write.statistics import compute_statistics

    series = manifest.get("series") or {}
    source = Path(str(series.get("source") or ""))
    uid, stack = series.get("series_uid"), series.get("stack")
    refs = [r for r in discover_series(source, recursive=False)
            if r.kind == "dicom" and r.uid == uid and _stack_label(r.stack) == _stack_label(stack)]
    if len(refs) != 1:
        raise ValueError(f"the source series {uid} (stack {stack}) is not (or not once) in {source} any more")
    volume = read_series(refs[0])
    image: Any = nib.load(str(result_dir / LABELMAP_FILE))
    labelmap = np.asarray(image.dataobj)
    if tuple(labelmap.shape) != tuple(volume.shape):
        raise ValueError(f"{LABELMAP_FILE} has shape {labelmap.shape}, the source series {volume.shape}")
    labels = read_label_map(result_dir / LABELMAP_FILE)
    seg_path, sr_path = result_dir / BINARY_SEG_FILE, result_dir / BINARY_SR_FILE
    bundle, run = manifest.get("bundle"), manifest.get("run")
    segments = write_path_atomic(seg_path, lambda tmp: write_dicom_seg(
        tmp, volume, labelmap, labels, segmentation_type="BINARY", bundle=bundle, run=run))
    sr: Path | None = None
    if want_sr:
        write_path_atomic(sr_path, lambda tmp: write_dicom_sr(
            tmp, volume, seg_path, segments, compute_statistics(volume, labelmap, labels), bundle=bundle, run=run))
        sr = sr_path
    log.info("BINARY DICOM-SEG rendered from the label-map result for a destination that does not take label-map "
             "SEGs: %s", seg_path)
    return BinaryVariant(seg_path, _uid(seg_path), sr, _uid(sr) if sr is not None else None)


def _stack_label(stack: Any) -> str:
    """A stack as the manifest records it (``volume.dicom.stack``) or as a ref has it, comparable."""
    if not stack:
        return ""
    if isinstance(stack, dict):
        return str(stack.get("label") or "")
    return str(getattr(stack, "label", stack))
