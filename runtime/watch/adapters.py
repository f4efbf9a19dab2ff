"""The watcher's thin, lazy door to the rest of edgeseg (reader, writer, segmenter, bundle, latency measurement).

Each function imports its target on first use, so importing the watcher stays light and the watcher keeps
working in builds or checkouts where a sibling module is not there yet: header reading, output detection and
error files fall back to small local versions (logged once); segmenting and bundle loading have no fallback and
raise :class:`~edgeseg.errors.MissingDependencyError` saying what is missing.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from edgeseg.errors import EdgesegError, MissingDependencyError

log = logging.getLogger(__name__)

_warned: set[tuple[str, str]] = set()

#: tags the completion tracker needs; reading only these keeps header parsing cheap
HEADER_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber", "Modality",
    "Rows", "Columns", "NumberOfFrames", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "ImagePositionPatient", "ImageOrientationPatient", "ImagesInAcquisition", "AcquisitionNumber",
    "NumberOfTemporalPositions", "InConcatenationTotalNumber", "InstanceNumber",
)


def _optional(module: str, name: str) -> Callable[..., Any] | None:
    """``module.name`` if importable, else None (logged once at debug level)."""
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as err:
        if (module, name) not in _warned:
            _warned.add((module, name))
            log.debug("interface %s.%s not available (%s); using the watcher's fallback", module, name, err)
        return None


# --------------------------------------------------------------------------------------------------------------
# reading


def read_dicom_header(path: Path) -> Any:
    """The DICOM header of ``path`` without pixel data, or None if the file is not DICOM.

    Uses ``edgeseg.runtime.read.read_dicom_header`` when present. May raise on a corrupt DICOM file.
    """
    real = _optional("edgeseg.runtime.read", "read_dicom_header")
    if real is not None:
        return real(path)
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except InvalidDicomError:
        return None


def series_ref(kind: str, source: Path, files: tuple[Path, ...], uid: str | None, description: str,
               series_number: int | None, expected_instances: int | None) -> Any:
    """An ``edgeseg.runtime.read.SeriesRef`` for exactly these files (no header is read again)."""
    real = _optional("edgeseg.runtime.read", "SeriesRef")
    if real is None:
        raise MissingDependencyError(
            "edgeseg.runtime.read.SeriesRef is not in this build; the watcher cannot hand a DICOM series to the "
            "segmenter. Install a complete edgeseg.")
    return real(kind=kind, source=source, files=files, uid=uid, description=description,
                series_number=series_number, expected_instances=expected_instances)


# --------------------------------------------------------------------------------------------------------------
# outputs


def _fallback_is_output(path: Path) -> bool:
    for part in Path(path).parts:
        if part.endswith(".edgeseg") or ".edgeseg.partial-" in part or ".edgeseg.old-" in part \
                or part.endswith(".edgeseg-error.json"):
            return True
    return False


def is_edgeseg_output(path: Path) -> bool:
    """True for anything edgeseg writes beside a series (result folders and their files, error files,
    temporary folders): the watcher must never take its own outputs as input."""
    if _fallback_is_output(path):  # cheap and always right for our own names
        return True
    real = _optional("edgeseg.runtime.write.atomic", "is_edgeseg_output")
    return bool(real(path)) if real is not None else False


def write_error_file(series_dir: Path, name: str, error: BaseException, what_to_do: str,
                     extra: dict[str, Any] | None = None) -> Path:
    """Write ``<series_dir>/<name>.edgeseg-error.json`` atomically (reason and what to do)."""
    real = _optional("edgeseg.runtime.write.atomic", "write_error_file")
    if real is not None:
        out = real(series_dir, name, error, what_to_do)
        return Path(out) if out is not None else Path(series_dir) / f"{name}.edgeseg-error.json"
    from edgeseg import __version__
    from edgeseg.runtime.watch.jobs import error_file_path

    target = error_file_path(Path(series_dir), name)
    payload = {
        "name": name,
        "kind": getattr(error, "kind", "internal"),
        "error": str(error),
        "error_type": type(error).__name__,
        "what_to_do": what_to_do,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "edgeseg_version": __version__,
        **(extra or {}),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.edgeseg-error.", suffix=".tmp", dir=series_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def clear_error_file(series_dir: Path, name: str) -> None:
    """Remove ``<name>.edgeseg-error.json`` after the series succeeded (no error if absent)."""
    real = _optional("edgeseg.runtime.write.atomic", "clear_error_file")
    if real is not None:
        real(series_dir, name)
        return
    from edgeseg.runtime.watch.jobs import error_file_path

    try:
        error_file_path(Path(series_dir), name).unlink()
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------------------------------------------
# model


def load_bundle(path: Path, verify: bool = True) -> Any:
    """``edgeseg.bundle.load_bundle``."""
    from edgeseg.bundle import load_bundle as real

    return real(path, verify=verify)


def segment_series_function() -> Callable[..., Any]:
    """``edgeseg.runtime.segment.segment_series``, or MissingDependencyError if this build lacks it."""
    real = _optional("edgeseg.runtime.segment", "segment_series")
    if real is None:
        raise MissingDependencyError(
            "edgeseg.runtime.segment.segment_series is not in this build, so the watcher cannot segment. "
            "Install a complete edgeseg."
        )
    return real


def measure_function() -> Callable[..., float] | None:
    """``measure(bundle, part, precision, device, threads) -> seconds per tile`` from edgeseg.runtime.infer
    (``engine.measure_tile_latency``), if present."""
    for module, name in (("edgeseg.runtime.infer.engine", "measure_tile_latency"), ("edgeseg.runtime.infer", "measure")):
        found = _optional(module, name)
        if found is not None and not callable(found):
            found = getattr(found, name, None)
        if callable(found):
            return found
    return None


def error_kind(err: BaseException) -> str:
    """Short machine-readable error class for the store and error files."""
    return err.kind if isinstance(err, EdgesegError) else "internal"
