"""DICOM as real scanners write it, made from a clean series (``edgeseg.demo.dicom_series``) for the tests.

* :func:`vendor_enhanced_mr`: an Enhanced MR Image file laid out like Siemens XA (syngo MR XA20/XA30) and Philips
  (R5.x) enhanced exports: PlaneOrientationSequence and PixelMeasuresSequence in every Per-frame Functional Groups
  item instead of the Shared Functional Groups (which keep only what is truly shared), optionally with the
  orientation noise of :func:`orientation_noise` per frame.
* :func:`ge_orientation_noise`: a classic series whose ImageOrientationPatient differs between slices in the last
  digits, as GE writes it (a fresh rounding of the same cosines per slice, ~1e-7).
* :func:`encode_series`: the same series in another transfer syntax, with pydicom's own encoders where it has one
  (RLE, JPEG-LS via pyjpegls, JPEG 2000 via pylibjpeg-openjpeg, deflated) and DCMTK's command-line tools where it
  has none (``dcmcjpeg`` for JPEG Lossless process 14 / SV1, baseline and extended; ``dcmconv +tb`` for big endian:
  pydicom does not convert pixel data between byte orders). DCMTK is a Debian package (``apt-get install dcmtk``;
  ``.ci/run`` installs it); a missing tool fails the test, it never skips.

Nothing here changes voxel values or geometry beyond what the name says; input files are not modified.
"""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydicom import uid

#: transfer syntax name -> (UID, lossless?) of every syntax :func:`encode_series` writes
SYNTAXES: dict[str, tuple[str, bool]] = {
    "jpeg_lossless_p14": (uid.JPEGLossless, True),
    "jpeg_lossless_sv1": (uid.JPEGLosslessSV1, True),
    "jpeg_baseline": (uid.JPEGBaseline8Bit, False),
    "jpeg_extended_12bit": (uid.JPEGExtended12Bit, False),
    "jpeg_ls_lossless": (uid.JPEGLSLossless, True),
    "jpeg2000_lossless": (uid.JPEG2000Lossless, True),
    "rle_lossless": (uid.RLELossless, True),
    "deflated": (uid.DeflatedExplicitVRLittleEndian, True),
    "big_endian": (uid.ExplicitVRBigEndian, True),
}


def dcmtk(name: str) -> str:
    """Path of a DCMTK tool; fails with the install command if DCMTK is missing."""
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"DCMTK's {name} is not installed: apt-get install dcmtk (.ci/run does it)")
    return found


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, \
        f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"


def _pydicom_compress(uid: str) -> Callable[[Path, Path], None]:
    def convert(src: Path, dst: Path) -> None:
        import pydicom

        ds = pydicom.dcmread(src)
        ds.compress(uid)
        ds.save_as(dst, enforce_file_format=True)
    return convert


def _deflate(src: Path, dst: Path) -> None:
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(dst, enforce_file_format=True)


def _tool(*args: str) -> Callable[[Path, Path], None]:
    def convert(src: Path, dst: Path) -> None:
        _run(dcmtk(args[0]), *args[1:], os.fspath(src), os.fspath(dst))
    return convert


_CONVERTERS: dict[str, Callable[[Path, Path], None]] = {
    "jpeg_lossless_p14": _tool("dcmcjpeg", "+el", "+sv", "6"),  # process 14, predictor 6 (not first-order)
    "jpeg_lossless_sv1": _tool("dcmcjpeg", "+e1"),
    "jpeg_baseline": _tool("dcmcjpeg", "+eb"),  # 8-bit lossy: DCMTK rescales the 16-bit values to 8 bits
    "jpeg_extended_12bit": _tool("dcmcjpeg", "+ee"),  # 12-bit lossy (process 4)
    "jpeg_ls_lossless": _pydicom_compress(uid.JPEGLSLossless),  # pyjpegls
    "jpeg2000_lossless": _pydicom_compress(uid.JPEG2000Lossless),  # pylibjpeg-openjpeg
    "rle_lossless": _pydicom_compress(uid.RLELossless),  # pydicom's own RLE encoder
    "deflated": _deflate,
    "big_endian": _tool("dcmconv", "+tb"),
}


def encode_series(files: list[Path], out_dir: Path, syntax: str) -> list[Path]:
    """Write every file of a classic series in transfer syntax ``syntax`` (a key of :data:`SYNTAXES`) into
    ``out_dir`` under the same names; returns the new paths."""
    import pydicom

    convert = _CONVERTERS[syntax]
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for src in files:
        dst = out_dir / Path(src).name
        convert(Path(src), dst)
        out.append(dst)
    written = pydicom.dcmread(out[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert written == SYNTAXES[syntax][0], f"{syntax}: wrote {written.name}"
    return out


def dcmtk_decoded(files: list[Path], out_dir: Path) -> list[Path]:
    """DCMTK's own decoding (``dcmdjpeg``) of JPEG files into uncompressed copies: the reference for lossy ones."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for src in files:
        dst = out_dir / Path(src).name
        _run(dcmtk("dcmdjpeg"), os.fspath(src), os.fspath(dst))
        out.append(dst)
    return out


def _noisy(iop: Any, rng: np.random.Generator, amplitude: float) -> list[Any]:
    """The cosines rounded afresh with a perturbation of ``amplitude`` (no renormalisation: as GE writes them)."""
    from pydicom.valuerep import DSfloat

    values = np.asarray([float(v) for v in iop]) + rng.uniform(-amplitude, amplitude, 6)
    return [DSfloat(float(v), auto_format=True) for v in values]


def ge_orientation_noise(files: list[Path], out_dir: Path, *, amplitude: float = 3e-7, seed: int = 0) -> list[Path]:
    """Copies of a classic series in which every slice has its own ImageOrientationPatient, the same cosines
    within ``amplitude`` (GE: dozens of distinct values ~1e-7 apart in one series). Manufacturer as GE's."""
    import pydicom

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for src in files:
        ds = pydicom.dcmread(src)
        ds.ImageOrientationPatient = _noisy(ds.ImageOrientationPatient, rng, amplitude)
        ds.Manufacturer = "GE MEDICAL SYSTEMS"
        ds.ManufacturerModelName = "SIGNA Premier"
        dst = out_dir / Path(src).name
        ds.save_as(dst, enforce_file_format=True)
        out.append(dst)
    distinct = {tuple(str(v) for v in pydicom.dcmread(p, stop_before_pixels=True).ImageOrientationPatient)
                for p in out}
    assert len(distinct) > 1, "the noise did not change the orientation strings"
    return out


def vendor_enhanced_mr(source: Any, out_path: Path, *, vendor: str = "SIEMENS", noise: float = 0.0,
                       frame_order: str = "shuffled", seed: int = 0) -> Path:
    """An Enhanced MR Image file of ``source`` ((array, affine) or a Volume) with per-frame geometry.

    Written by :func:`edgeseg.demo.dicom_series.write_enhanced_mr` (which shares orientation and pixel measures),
    then rearranged as Siemens XA and Philips enhanced MR exports are: the Shared Functional Groups' PlaneOrientation
    Sequence and PixelMeasuresSequence (PixelSpacing, SliceThickness, SpacingBetweenSlices) are copied into every
    Per-frame Functional Groups item and removed from the shared item; the PixelValueTransformationSequence (rescale)
    moves per frame too (Philips keeps it per frame; Siemens XA shares it -- ``vendor="SIEMENS"`` keeps it shared).
    ``noise`` > 0 gives each frame its own orientation cosines within ``noise``. Manufacturer and model are set to
    the vendor's. The pixel data and every plane position are unchanged.
    """
    import pydicom

    from edgeseg.demo.dicom_series import write_enhanced_mr

    path = write_enhanced_mr(source, out_path, frame_order=frame_order, seed=seed)
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    moved = ["PlaneOrientationSequence", "PixelMeasuresSequence"]
    if vendor.upper() == "PHILIPS":
        moved.append("PixelValueTransformationSequence")
    rng = np.random.default_rng(seed + 1)
    for item in ds.PerFrameFunctionalGroupsSequence:
        for keyword in moved:
            setattr(item, keyword, copy.deepcopy(getattr(shared, keyword)))
        if noise > 0:
            orientation = item.PlaneOrientationSequence[0]
            orientation.ImageOrientationPatient = _noisy(orientation.ImageOrientationPatient, rng, noise)
    for keyword in moved:
        delattr(shared, keyword)
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = {
        "SIEMENS": ("Siemens Healthineers", "MAGNETOM Vida", "syngo MR XA30"),
        "PHILIPS": ("Philips Medical Systems", "Ingenia", "5.7.1"),
    }[vendor.upper()]
    ds.save_as(path, enforce_file_format=True)
    return path
