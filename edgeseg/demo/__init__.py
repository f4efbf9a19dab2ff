"""The demo shipped inside the package: a small model bundle and a real MRI (see SOURCE.md).

The demo model was trained on ONE abdominal MRI case: it is a demo and test model, not a clinical one.
This module is the one place that knows where they are (``bundle: demo``, ``--bundle demo``, ``edgeseg demo``).
"""
from __future__ import annotations

from pathlib import Path

from edgeseg.errors import BundleError

_HERE = Path(__file__).resolve().parent
#: the packaged demo bundle folder (a stripped build may lack it: :func:`demo_bundle_path` says so)
BUNDLE_DIR = _HERE / "bundle"
#: the packaged demo MRI (117x91x20 voxels at 3 mm, abdominal, from TotalSegmentator's test files)
MRI_FILE = _HERE / "mri" / "example_mr_sm.nii.gz"


def demo_bundle_path() -> Path:
    """The packaged demo bundle folder; :class:`BundleError` when this installation lacks it."""
    if not (BUNDLE_DIR / "bundle.json").is_file():
        raise BundleError(f"The demo bundle is missing from this installation ({BUNDLE_DIR}); reinstall edgeseg.")
    return BUNDLE_DIR


def demo_mri_path() -> Path:
    """The packaged demo MRI; :class:`BundleError` when this installation lacks it."""
    if not MRI_FILE.is_file():
        raise BundleError(f"The demo MRI is missing from this installation ({MRI_FILE}); reinstall edgeseg.")
    return MRI_FILE
