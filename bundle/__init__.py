"""The model bundle: the self-describing folder that export writes and the runtime loads.

A bundle is a folder with ``bundle.json`` (see :mod:`edgeseg.bundle.schema`), the OpenVINO IR files of every
model part and precision, and the export's validation report. Every file's sha256 is recorded; the runtime
refuses a bundle whose files do not match (:func:`load_bundle` with ``verify=True``).
"""
from __future__ import annotations

from edgeseg.bundle.schema import (
    SCHEMA_VERSION,
    Bundle,
    ModelFile,
    Normalization,
    Part,
    PreResample,
    Resampling,
    Variant,
    load_bundle,
    bundle_to_dict,
)
from edgeseg.bundle.hashing import sha256_file, hash_tree, verify_files

__all__ = [
    "SCHEMA_VERSION", "Bundle", "ModelFile", "Normalization", "Part", "PreResample", "Resampling", "Variant",
    "load_bundle", "bundle_to_dict", "sha256_file", "hash_tree", "verify_files",
]
