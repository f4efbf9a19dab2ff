"""The demo shipped inside the package: a small model bundle and a real MRI (see SOURCE.md).

The demo model was trained on ONE abdominal MRI case: it is a demo and test model, not a clinical one.
"""
from __future__ import annotations

from pathlib import Path

from edgeseg.errors import BundleError

_HERE = Path(__file__).resolve().parent


def demo_bundle_path() -> Path:
    """The packaged demo bundle folder."""
    path = _HERE / "bundle"
    if not (path / "bundle.json").is_file():
        raise BundleError(f"The demo bundle is missing from this installation ({path}); reinstall edgeseg.")
    return path


def demo_mri_path() -> Path:
    """The packaged demo MRI (117x91x20 voxels at 3 mm, abdominal, from TotalSegmentator's test files)."""
    path = _HERE / "mri" / "example_mr_sm.nii.gz"
    if not path.is_file():
        raise BundleError(f"The demo MRI is missing from this installation ({path}); reinstall edgeseg.")
    return path
