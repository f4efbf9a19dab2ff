"""File-name-safe stems for outputs (``Volume.name``)."""
from __future__ import annotations

import re

_NOT_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
_NOT_SAFE_DOTS = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_stem(text: str, *, max_len: int = 60, allow_dots: bool = False, fallback: str = "series") -> str:
    """Reduce ``text`` to letters, digits, '-' and '_' (and single inner dots if ``allow_dots``).

    Runs of other characters become one '_'; leading/trailing '_', '-' and '.' are stripped; the result is cut
    to ``max_len`` characters and is never empty, never contains a path separator, and never contains "..".
    """
    pattern = _NOT_SAFE_DOTS if allow_dots else _NOT_SAFE
    stem = pattern.sub("_", text)
    if allow_dots:
        stem = re.sub(r"\.{2,}", "_", stem)
    stem = re.sub(r"_{2,}", "_", stem).strip("_-.")[:max_len].strip("_-.")
    return stem or fallback


def dicom_series_name(description: str, series_uid: str) -> str:
    """``<sanitized SeriesDescription (max 60)>_<last 8 digits of the SeriesInstanceUID>``."""
    digits = re.sub(r"\D", "", series_uid or "")[-8:] or "00000000"
    return f"{safe_stem(description or '', max_len=60)}_{digits}"


def nifti_name(file_name: str) -> str:
    """The file name without ``.nii``/``.nii.gz`` (or ``.par``/``.rec``), made file-name safe."""
    lower = file_name.lower()
    for ext in (".nii.gz", ".nii", ".par", ".rec"):
        if lower.endswith(ext):
            file_name = file_name[: -len(ext)]
            break
    return safe_stem(file_name, max_len=120, allow_dots=True, fallback="image")
