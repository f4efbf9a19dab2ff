"""Real scanner DICOM in, interoperable DICOM-SEG out (issue 11).

Fixtures (``tests/helpers/scanner_dicom.py``) made from the demo MRI's classic series: every common transfer
syntax, Siemens XA / Philips enhanced MR with per-frame pixel measures and orientation, GE orientation noise.
Each SEG is checked by dciodvfy, read back by dcmqi and highdicom and compared voxel for voxel in world
coordinates with the label map (``tests/helpers/seg_validation.py``).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers.scanner_dicom import (SYNTAXES, dcmtk_decoded, encode_series, ge_orientation_noise,
                                   vendor_enhanced_mr)
from helpers.seg_validation import validate_result_folder, validate_seg
from io_helpers import geometry_variants
from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.options import OutputOptions
from edgeseg.runtime.read import read_series
from edgeseg.runtime.write import write_dicom_seg, write_results

Image3 = tuple[np.ndarray, np.ndarray]
LOSSLESS = [name for name, (_, lossless) in SYNTAXES.items() if lossless]
#: what the base install decodes (pydicom's plugins gdcm, pyjpegls, pillow and its own): every syntax but this one
UNDECODABLE = "jpeg_extended_12bit"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


@pytest.fixture(scope="session")
def encoded(dicom_series_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The axial demo series in every syntax of SYNTAXES (session-wide; treat read-only)."""
    base = tmp_path_factory.mktemp("syntaxes")
    plain = _files(dicom_series_dirs["axial"])
    return {name: encode_series(plain, base / name, name)[0].parent for name in SYNTAXES}


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "series"
    shutil.copytree(folder, dst)
    return dst


@pytest.mark.parametrize("syntax", LOSSLESS)
def test_lossless_syntax_reads_the_same_voxels_and_gets_a_valid_seg(
        syntax: str, encoded: dict[str, Path], dicom_series_dirs: dict[str, Path], seg_array: np.ndarray,
        labels: dict[int, str], tmp_path: Path) -> None:
    reference = read_series(dicom_series_dirs["axial"])
    vol = read_series(_copy(encoded[syntax], tmp_path))
    assert vol.dicom.transfer_syntax_uid == SYNTAXES[syntax][0]
    np.testing.assert_array_equal(vol.array, reference.array)
    np.testing.assert_allclose(vol.affine, reference.affine, atol=1e-6)
    result = write_results(vol, seg_array, labels, OutputOptions(preview=False, statistics=False), {})
    validate_result_folder(result.output_dir)


def test_jpeg_baseline_decodes_as_dcmtk_does(encoded: dict[str, Path], seg_array: np.ndarray,
                                            labels: dict[int, str], tmp_path: Path) -> None:
    """Lossy: the voxels are DCMTK's own decoding of the same files (IDCT rounding may differ by one step)."""
    vol = read_series(_copy(encoded["jpeg_baseline"], tmp_path))
    reference = read_series(dcmtk_decoded(_files(encoded["jpeg_baseline"]), tmp_path / "dcmtk")[0].parent)
    slope = float(pydicom.dcmread(_files(encoded["jpeg_baseline"])[0], stop_before_pixels=True).get(
        "RescaleSlope", 1.0))
    assert float(np.abs(vol.array - reference.array).max()) <= 1.0 * slope + 1e-3
    assert float(np.abs(vol.array - reference.array).mean()) < 0.05 * slope
    result = write_results(vol, seg_array, labels, OutputOptions(preview=False, statistics=False), {})
    validate_result_folder(result.output_dir)


def test_undecodable_syntax_says_what_to_do(encoded: dict[str, Path], tmp_path: Path) -> None:
    """12-bit JPEG Extended (process 4): pydicom's only decoder for it is GPL (pylibjpeg-libjpeg), not installed.
    The error tells the radiographer how to re-export."""
    with pytest.raises(InvalidSeriesError) as info:
        read_series(_copy(encoded[UNDECODABLE], tmp_path))
    message = str(info.value)
    assert "JPEG Extended" in message and SYNTAXES[UNDECODABLE][0] in message
    assert "export the series again uncompressed" in message and "JPEG Lossless" in message


_BASE_ONLY = r"""
import json, sys
for name in ("pylibjpeg", "libjpeg", "openjpeg", "rle"):  # the test extra's encoders; not in the base install
    sys.modules[name] = None
import numpy as np
from edgeseg.runtime.read import read_series
from pydicom.pixels import get_decoder
plain = read_series(sys.argv[1]).array
out = {}
for name, folder in json.loads(sys.argv[2]).items():
    out[name] = float(np.abs(read_series(folder).array - plain).max())
print(json.dumps(out))
"""


def test_base_install_decoders_read_every_common_syntax(encoded: dict[str, Path],
                                                        dicom_series_dirs: dict[str, Path]) -> None:
    """With only the base install's plugins (the test extra's pylibjpeg blocked), every syntax but 12-bit JPEG
    Extended decodes; the lossless ones to the same voxels."""
    wanted = {name: str(folder) for name, folder in encoded.items() if name != UNDECODABLE}
    proc = subprocess.run([sys.executable, "-c", _BASE_ONLY, str(dicom_series_dirs["axial"]), json.dumps(wanted)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    diffs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(diffs) == set(wanted)
    assert all(diffs[name] == 0.0 for name in LOSSLESS), diffs


@pytest.mark.parametrize("vendor, geometry, noise", [("SIEMENS", "axial", 0.0), ("PHILIPS", "oblique", 0.0),
                                                     ("PHILIPS", "sagittal", 3e-7)])
@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_enhanced_mr_with_per_frame_geometry_gets_a_valid_seg(vendor: str, geometry: str, noise: float,
                                                              seg_type: str, mr_image: Image3, seg_array: np.ndarray,
                                                              labels: dict[int, str], tmp_path: Path) -> None:
    arr, aff = geometry_variants(*mr_image)[geometry]
    lab = seg_array.transpose((1, 2, 0)) if geometry == "sagittal" else seg_array
    src = vendor_enhanced_mr((arr, aff), tmp_path / "enh" / "MF0001", vendor=vendor, noise=noise)
    shared = pydicom.dcmread(src, stop_before_pixels=True).SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" not in shared and "PlaneOrientationSequence" not in shared
    vol = read_series(src)
    np.testing.assert_allclose(vol.affine, aff, atol=1e-4)
    segments = write_dicom_seg(tmp_path / "seg.dcm", vol, lab, labels, segmentation_type=seg_type)
    validate_seg(tmp_path / "seg.dcm", lab, vol.affine, {n: s["label"] for n, s in segments.items()})


@pytest.mark.parametrize("geometry", ["axial", "oblique"])
@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_ge_orientation_noise_gets_a_valid_seg(geometry: str, seg_type: str, mr_image: Image3,
                                               seg_array: np.ndarray, labels: dict[int, str],
                                               dicom_series_dirs: dict[str, Path], tmp_path: Path) -> None:
    _, aff = geometry_variants(*mr_image)[geometry]
    folder = ge_orientation_noise(_files(dicom_series_dirs[geometry]), tmp_path / "ge")[0].parent
    vol = read_series(folder)
    np.testing.assert_allclose(vol.affine, aff, atol=1e-4)
    segments = write_dicom_seg(tmp_path / "seg.dcm", vol, seg_array, labels, segmentation_type=seg_type)
    validate_seg(tmp_path / "seg.dcm", seg_array, vol.affine, {n: s["label"] for n, s in segments.items()})
    # one orientation for the whole SEG, and every frame still linked to its source slice
    seg = pydicom.dcmread(tmp_path / "seg.dcm", stop_before_pixels=True)
    assert "PlaneOrientationSequence" in seg.SharedFunctionalGroupsSequence[0]
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in vol.dicom_files}
    linked = {item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
              for item in seg.PerFrameFunctionalGroupsSequence}
    assert linked <= sources and linked
