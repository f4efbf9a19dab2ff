"""NIfTI and PAR/REC reading: round trip against nibabel, 4-D handling, errors, discovery, names."""
from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.read import SeriesRef, discover_series, read_series

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
PHANTOM_PAR = NIBABEL_DATA / "phantom_EPI_asc_CLEAR_2_1.PAR"


def test_nifti_round_trip(mr_path: Path) -> None:
    img = nib.load(str(mr_path))
    vol = read_series(mr_path)
    assert vol.kind == "nifti"
    assert vol.shape == (117, 91, 20)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.affine, img.affine)
    np.testing.assert_array_equal(vol.array, img.get_fdata())
    assert vol.name == "example_mr_sm"
    assert vol.source == mr_path
    assert vol.series_uid is None
    assert int(vol.nifti_header["sform_code"]) == int(img.header["sform_code"])
    assert vol.spacing == pytest.approx((3.0, 3.0, 3.0))


def test_nifti_scaling_and_singleton_4d(tmp_path: Path, mr_image: tuple[np.ndarray, np.ndarray]) -> None:
    arr, aff = mr_image
    img = nib.Nifti1Image(arr[..., None], aff)
    img.header.set_slope_inter(2.0, -10.0)
    path = tmp_path / "scaled.nii"
    nib.save(img, str(path))
    vol = read_series(path)
    assert vol.shape == arr.shape
    np.testing.assert_allclose(vol.array, arr * 2.0 - 10.0)
    assert vol.name == "scaled_nii"  # the extension stays in the name: never the same as scaled.nii.gz's


def test_true_4d_nifti_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dyn.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), str(path))
    with pytest.raises(InvalidSeriesError, match="dyn.nii.gz.*4-D"):
        read_series(path)


def test_broken_nifti_is_invalid_series(tmp_path: Path, mr_path: Path) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(mr_path.read_bytes()[:2000])
    with pytest.raises(InvalidSeriesError, match="broken.nii.gz"):
        read_series(path)


def test_nifti_name_is_file_name_safe(tmp_path: Path, mr_image: tuple[np.ndarray, np.ndarray]) -> None:
    path = tmp_path / "patient 7..T1 (post).nii.gz"
    nib.save(nib.Nifti1Image(*mr_image), str(path))
    vol = read_series(path)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", vol.name)
    assert ".." not in vol.name and "/" not in vol.name


def test_discovery_in_a_folder(tmp_path: Path, mr_image: tuple[np.ndarray, np.ndarray]) -> None:
    nib.save(nib.Nifti1Image(*mr_image), str(tmp_path / "a.nii.gz"))
    nib.save(nib.Nifti1Image(*mr_image), str(tmp_path / "b.nii"))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a.edgeseg").mkdir()
    nib.save(nib.Nifti1Image(*mr_image), str(tmp_path / "a.edgeseg" / "seg.nii.gz"))  # our own output
    refs = discover_series(tmp_path)
    assert [r.source.name for r in refs] == ["a.nii.gz", "b.nii"]
    assert all(isinstance(r, SeriesRef) and r.kind == "nifti" for r in refs)
    with pytest.raises(InvalidSeriesError, match="holds 2 series"):
        read_series(tmp_path)
    vol = read_series(refs[1])
    assert vol.name == "b_nii"


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidSeriesError, match="does not exist"):
        discover_series(tmp_path / "nope")
    with pytest.raises(InvalidSeriesError, match="no readable image series"):
        read_series(tmp_path)


@pytest.mark.filterwarnings("ignore:PAR/REC version")
def test_parrec_dispatch_error_paths(tmp_path: Path) -> None:
    bogus = tmp_path / "scan.PAR"
    bogus.write_text("# this is not a PAR header\n")
    refs = discover_series(tmp_path)
    assert [(r.kind, r.source.name) for r in refs] == [("parrec", "scan.PAR")]
    with pytest.raises(InvalidSeriesError, match="scan.PAR"):
        read_series(refs[0])


@pytest.mark.skipif(not PHANTOM_PAR.exists(), reason="nibabel's PAR/REC test data is not installed")
def test_real_parrec(tmp_path: Path) -> None:
    # the phantom holds 3 dynamics: a true 4-D series
    with pytest.raises(InvalidSeriesError, match="4-D"):
        read_series(PHANTOM_PAR)
    # PAR without its REC
    lonely = tmp_path / "lonely.PAR"
    lonely.write_bytes(PHANTOM_PAR.read_bytes())
    with pytest.raises(InvalidSeriesError, match="lonely.PAR"):
        read_series(lonely)
    # keep the first dynamic only: a 3-D PAR/REC pair that must match nibabel's 4-D image at t=0
    lines = []
    for line in PHANTOM_PAR.read_bytes().decode("latin-1").splitlines(keepends=True):
        fields = line.split()
        if fields and fields[0].isdigit() and fields[2] != "1":
            continue
        if "Max. number of dynamics" in line:
            line = re.sub(r":(\s*)3", r":\g<1>1", line)
        lines.append(line)
    par = tmp_path / "one_dyn.PAR"
    par.write_bytes("".join(lines).encode("latin-1"))
    full = nib.load(str(PHANTOM_PAR))
    n_bytes = int(np.prod(full.shape[:3])) * 2
    (tmp_path / "one_dyn.REC").write_bytes(PHANTOM_PAR.with_suffix(".REC").read_bytes()[:n_bytes])
    vol = read_series(tmp_path / "one_dyn.REC")  # either file of the pair
    assert vol.kind == "parrec" and vol.name == "one_dyn_PAR"
    assert vol.shape == full.shape[:3]
    np.testing.assert_allclose(vol.affine, full.affine)
    np.testing.assert_allclose(vol.array, full.get_fdata()[..., 0], rtol=1e-5)


def test_truncated_rec_names_the_pair_and_the_remedy(tmp_path: Path) -> None:
    """A REC shorter than its PAR promises: an InvalidSeriesError naming the PAR and saying to copy the REC
    again (nibabel's error inside it), never nibabel's own exception."""
    lines = [line for line in PHANTOM_PAR.read_bytes().decode("latin-1").splitlines(keepends=True)
             if not (line.split() and line.split()[0].isdigit() and line.split()[2] != "1")]
    lines = [re.sub(r":(\s*)3", r":\g<1>1", line) if "Max. number of dynamics" in line else line for line in lines]
    par = tmp_path / "cut.PAR"
    par.write_bytes("".join(lines).encode("latin-1"))
    (tmp_path / "cut.REC").write_bytes(PHANTOM_PAR.with_suffix(".REC").read_bytes()[:1000])
    with pytest.raises(InvalidSeriesError,
                       match=r"(?s)cut\.PAR: the REC data could not be read.*Copy the REC file again"):
        read_series(par)
