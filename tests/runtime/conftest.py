"""Fixtures for the read/write tests: the real MRI (packaged copy), its reference labels (a committed test fixture)
and DICOM series written from it.

Pure helpers live in ``io_helpers.py`` (a unique module name, so it cannot clash with other conftest files).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from io_helpers import geometry_variants


@pytest.fixture(scope="session")
def mr_path(real_mri: Path) -> Path:
    """The real abdominal MRI: 117x91x20 int16 at 3 mm, axis codes L,P,S (tests/conftest.py's ``real_mri``)."""
    return real_mri


@pytest.fixture(scope="session")
def seg_path(real_labels: Path) -> Path:
    """Its TotalSegmentator total_mr labels (tests/conftest.py's ``real_labels``)."""
    return real_labels


@pytest.fixture(scope="session")
def mr_image(mr_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(int16 array (I, J, K), RAS affine) of the real MRI."""
    import nibabel as nib

    img: Any = nib.load(str(mr_path))
    return np.asanyarray(img.dataobj).astype(np.int16), np.asarray(img.affine, dtype=np.float64)


@pytest.fixture(scope="session")
def seg_array(seg_path: Path) -> np.ndarray:
    """TotalSegmentator total_mr labels of the real MRI, same grid, uint8."""
    import nibabel as nib

    return np.asanyarray(nib.load(str(seg_path)).dataobj).astype(np.uint8)


@pytest.fixture(scope="session")
def labels(real_mri: Path) -> dict[int, str]:
    """The 50 total_mr structure names by label number (shipped beside the packaged MRI)."""
    with open(real_mri.parent / "total_mr_labels.json", encoding="utf-8") as fh:
        return {int(k): v for k, v in json.load(fh).items()}


@pytest.fixture(scope="session")
def dicom_series_dirs(mr_image: tuple[np.ndarray, np.ndarray],
                      tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One classic MR DICOM series folder per geometry variant, written once per session (treat read-only)."""
    from edgeseg.demo.dicom_series import write_dicom_series

    base = tmp_path_factory.mktemp("dicom_geometries")
    dirs = {}
    for name, (arr, aff) in geometry_variants(*mr_image).items():
        dirs[name] = base / name
        write_dicom_series((arr, aff), dirs[name], series_description=f"T1 {name}")
    return dirs
