"""Public entry points of the read stage: find series on disk, read one into a :class:`Volume`.

``discover_series`` accepts a folder (walked recursively), a DICOM file, a NIfTI file or a PAR/REC file and
returns :class:`SeriesRef` objects from headers only. ``read_series`` dispatches on ``SeriesRef.kind`` to the
private readers ``_nifti``, ``_parrec`` and ``_dicom``. Every reader returns the same contract: ``Volume.array``
(I, J, K) float32 with scaling applied, ``Volume.affine`` voxel -> RAS+ mm. Input files are never modified.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.naming import is_edgeseg_output
from edgeseg.runtime.heap import release_freed_memory
from edgeseg.runtime.read._dicom import discover_dicom, read_dicom_series
from edgeseg.runtime.read._nifti import read_nifti
from edgeseg.runtime.read._parrec import par_of, read_parrec, rec_files
from edgeseg.runtime.read.headers import REC, SkippedFiles, file_kind
from edgeseg.runtime.read.limits import ReadLimits
from edgeseg.runtime.read.paths import CandidateFilter
from edgeseg.runtime.read.selection import SelectionRules
from edgeseg.runtime.read.series_ref import DICOM, NIFTI, PARREC, SeriesRef
from edgeseg.runtime.read.volume import Volume
from edgeseg.typing import StrPath

log = logging.getLogger(__name__)


def _walk(folder: Path, recursive: bool, candidates: CandidateFilter) -> list[Path]:
    """Regular files under ``folder`` (sorted), skipping hidden entries, everything edgeseg writes and, by the one
    symlink rule (:mod:`edgeseg.runtime.read.paths`), every symbolic link below ``folder`` (logged once)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        if not recursive:
            dirs[:] = []
        for d in [d for d in dirs if not d.startswith(".") and is_edgeseg_output(d)]:
            candidates.output_lookalike(Path(root) / d)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_edgeseg_output(d)
                         and candidates.allows(Path(root) / d))
        for name in sorted(files):
            if name.startswith(".") or is_edgeseg_output(name):
                continue
            path = Path(root) / name
            if candidates.allows(path) and path.is_file():
                found.append(path)
    return found


def _file_ref(path: Path) -> SeriesRef:
    return SeriesRef(kind=NIFTI if file_kind(path) == NIFTI else PARREC, source=path, files=(path,),
                     description=path.name)


def discover_series(path: StrPath, *, recursive: bool = True, skipped: SkippedFiles | None = None,
                    echoes: str = "all", selection: SelectionRules | None = None) -> list[SeriesRef]:
    """Find the image series at ``path`` without reading pixel data.

    * a folder: every NIfTI file, every PAR/REC pair (one ref per .PAR) and every DICOM image series (grouped by
      SeriesInstanceUID, or by folder and headers for a series exported without one; any file names,
      DICOMDIR/non-image/non-DICOM files skipped, localizer-only series skipped; a series holding several 3-D stacks
      at the same positions, such as echoes, gives one ref per stack, or only the first with ``echoes="first"``:
      :func:`~edgeseg.runtime.read.headers.split_series`); sub-folders are walked when ``recursive``; hidden entries
      and edgeseg's own outputs are ignored,
      and so is every symbolic link below ``path`` (never followed; logged once; :mod:`edgeseg.runtime.read.paths`);
    * a NIfTI or PAR/REC file: one ref for it;
    * any other file: the DICOM series of that one file (enough for an enhanced multi-frame image).

    Returns refs in a stable order (NIfTI/PAR by path, then DICOM by SeriesNumber and UID); an empty list when
    nothing readable is there. Every DICOM candidate that did not become part of a series is added to ``skipped``
    (when given) with its reason, and logged: with ``selection`` (:mod:`edgeseg.runtime.read.selection`; its
    ``multi_volume`` replaces ``echoes``) the series and stacks a rule skips first (``skipped.by_rule``, one info line
    each), then the images edgeseg refuses (a Siemens mosaic, a colour image, no
    patient geometry: :data:`~edgeseg.runtime.read.headers.REFUSED`) as a warning, the rest (reports, localizer-only
    series, files that are not DICOM) at info level, with counts and an example file per reason. Raises
    :class:`InvalidSeriesError` if ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidSeriesError(f"{path} does not exist: check the path of the series to segment.")
    found = SkippedFiles()
    if path.is_file():
        kind = file_kind(path)
        if kind == NIFTI:
            return [_file_ref(path)]
        if kind in (PARREC, REC):
            return [_file_ref(par_of(path))]
        return _report(path, discover_dicom([path], found, echoes, selection), found, skipped)
    candidates = CandidateFilter([path])
    files = _walk(path, recursive, candidates)
    refs: list[SeriesRef] = []
    seen_par: set[Path] = set()
    dicom_candidates: list[Path] = []
    for f in files:
        kind = file_kind(f)
        if kind == NIFTI:
            refs.append(_file_ref(f))
        elif kind in (PARREC, REC):
            par = par_of(f)
            if par not in seen_par:
                seen_par.add(par)
                pair = [par, *rec_files(par)]
                if all(candidates.allows(p) for p in pair):  # nibabel opens the other file of the pair by name
                    refs.append(_file_ref(par))
        else:
            dicom_candidates.append(f)
    refs.extend(discover_dicom(dicom_candidates, found, echoes, selection))
    log.debug("discovered %d series under %s", len(refs), path)
    return _report(path, refs, found, skipped)


def _report(path: Path, refs: list[SeriesRef], found: SkippedFiles, skipped: SkippedFiles | None) -> list[SeriesRef]:
    """Log what discovery skipped under ``path`` (refused images as a warning) and hand it to ``skipped``."""
    refused = found.refused
    if refused:
        log.warning("not segmented under %s: %s", path, found.summary(refused))
    others = {reason: files for reason, files in found.files.items() if reason not in refused}
    if others:
        log.info("skipped under %s: %s", path, found.summary(others))
    if skipped is not None:
        for reason, files in found.files.items():
            for f in files:
                skipped.add(reason, f)
        skipped.by_rule.extend(found.by_rule)
    return refs


def series_to_segment(path: StrPath, *, echoes: str = "all", selection: SelectionRules | None = None,
                      fix: str = "Give a NIfTI (.nii/.nii.gz) or PAR/REC file, or a folder holding the DICOM files of "
                                 "a series.", skipped: SkippedFiles | None = None
                      ) -> tuple[list[SeriesRef], list[InvalidSeriesError]]:
    """What a command segments at ``path`` (``segment``, ``run``): every series the selection rules keep
    (:func:`discover_series` with ``selection``, default :class:`SelectionRules` with ``echoes`` as its
    ``multi_volume``) and, one per reason, the images edgeseg refuses (a mosaic, a colour image, no geometry), which
    count as failed series. What the rules skipped is in ``skipped.by_rule`` (when given): not an error. Nothing at
    all found raises :class:`InvalidSeriesError` naming what was found there and ``fix``; a folder whose every series
    was skipped by a rule returns no refs and no refusals."""
    rules = selection if selection is not None else SelectionRules(multi_volume=echoes)
    skipped = skipped if skipped is not None else SkippedFiles()
    refs = discover_series(path, skipped=skipped, echoes=rules.multi_volume, selection=rules)
    refused = [InvalidSeriesError(f"{len(files)} file(s) in {path} not segmented, e.g. {files[0].name}: {reason}.")
               for reason, files in skipped.refused.items()]
    if not refs and (refused or not skipped.by_rule):
        why = f"{skipped.summary()}. " if skipped else ""
        raise InvalidSeriesError(f"No image series found in {path}: {why}{fix}")
    return refs, refused


def read_series(ref_or_path: SeriesRef | StrPath, limits: ReadLimits | None = None) -> Volume:
    """Read one series into a :class:`Volume` (array (I, J, K) float32, affine voxel -> RAS+ mm).

    ``ref_or_path`` is a :class:`SeriesRef` from :func:`discover_series`, or a path that holds exactly one
    series (a NIfTI/PAR file, an enhanced DICOM file, or a folder with one DICOM series). A path holding no
    series or several raises :class:`InvalidSeriesError` (listing the series UIDs to choose from).
    ``limits`` bounds what headers may promise (default :class:`ReadLimits`); beyond it
    :class:`~edgeseg.errors.SeriesTooLargeError` is raised before pixel data is read.
    """
    if isinstance(ref_or_path, SeriesRef):
        ref = ref_or_path
    else:
        skipped = SkippedFiles()
        refs = discover_series(ref_or_path, skipped=skipped)
        if not refs:
            raise InvalidSeriesError(
                f"{ref_or_path} holds no readable image series (no NIfTI, PAR/REC or DICOM image files"
                + (f"; skipped: {skipped.summary()}" if skipped else "") + "). Check that the export finished and "
                "that the path points at the series."
            )
        if len(refs) > 1:
            listing = "; ".join(f"{r.uid or r.source} ({r.description})" for r in refs)
            raise InvalidSeriesError(
                f"{ref_or_path} holds {len(refs)} series: {listing}. Pass the one to segment (a SeriesRef from "
                "discover_series, or a folder or file holding only that series)."
            )
        ref = refs[0]
    try:
        if ref.kind == NIFTI:
            return read_nifti(ref.source, limits)
        if ref.kind == PARREC:
            return read_parrec(ref.source)
        if ref.kind == DICOM:
            return read_dicom_series(ref, limits)
    finally:
        release_freed_memory()  # the decoding workers' freed buffers: else the next stages grow the process again
    raise InvalidSeriesError(f"{ref.source}: unknown series kind {ref.kind!r} (expected dicom, nifti or parrec).")
