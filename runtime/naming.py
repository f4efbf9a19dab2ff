"""The one naming of edgeseg: series names, series keys, and the names of everything written beside a series.

* Series names (``Volume.name``, the ``<name>`` of ``<name>.edgeseg/``): file-name-safe stems, unique per series.
  The reader names every :class:`~edgeseg.runtime.read.volume.Volume` with :func:`dicom_series_name` /
  :func:`nifti_name` and the watcher names its jobs (error files, result folders) with the same ones, so both agree.
  Two series in one folder never share a name by construction for image files (:func:`nifti_name`); where they
  still could (two DICOM series with the same description whose UIDs end in the same 8 digits), the writer
  publishes the second under :func:`disambiguated` instead of replacing the first (see
  :class:`~edgeseg.runtime.write.atomic.ResultFolder`).
* Series keys (:func:`series_key`): the watcher's job key, recorded by results as their owner.
* Output names (:func:`result_dir_name`, :func:`error_file_name`, and the hidden temporaries): what the writer
  creates, and what the reader and the watcher recognise (:func:`is_edgeseg_output`) and skip.

Imports nothing from the runtime's stages: read, write and watch all import it at their top.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from edgeseg.typing import StrPath

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


#: how a series identity derived from headers begins (:func:`derived_series_id`); a SeriesInstanceUID never does
DERIVED_ID_PREFIX = "nouid-"
_DERIVED_ID = re.compile(r"nouid-[0-9a-f]{16}")


def derived_series_id(*fields: object) -> str:
    """``nouid-<16 hex digits>``: the identity of a DICOM series exported without a SeriesInstanceUID (empty or
    missing, as some de-identification tools leave it), from the header values that group its instances (the
    read stage passes them: :func:`edgeseg.runtime.read.headers.series_identity`). The same values give the same
    identity in every process; being hex digits after a fixed prefix it is valid in a series key and a file name,
    whatever the headers held (they are only hashed)."""
    text = "\x1f".join("" if f is None else str(f) for f in fields)
    return DERIVED_ID_PREFIX + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def is_derived_series_id(identity: str | None) -> bool:
    """True for an identity made by :func:`derived_series_id` (a series without SeriesInstanceUID)."""
    return bool(identity) and _DERIVED_ID.fullmatch(str(identity)) is not None


def dicom_series_name(description: str, series_uid: str, stack: str | None = None) -> str:
    """``<sanitized SeriesDescription (max 60)>_<last 8 digits of the SeriesInstanceUID>``; for a series identified
    by :func:`derived_series_id` (no SeriesInstanceUID), its last 8 hex digits instead. One 3-D stack of a series
    that holds several (echoes, image types, time points) appends its label: ``..._echo2``
    (:func:`stack_label`)."""
    if is_derived_series_id(series_uid):
        tail = series_uid[-8:]
    else:
        tail = re.sub(r"\D", "", series_uid or "")[-8:] or "00000000"
    name = f"{safe_stem(description or '', max_len=60)}_{tail}"
    return f"{name}_{stack_label(stack)}" if stack else name


def stack_label(text: str) -> str:
    """A stack's label as it appears in names and keys (``echo2``, ``IN_PHASE``, ``t3``): sanitized, at most 40
    characters."""
    return safe_stem(text, max_len=40, fallback="stack")


def name_tag(identity: str) -> str:
    """8 hex digits of the sha256 of ``identity`` (as the OS's bytes for a name that is not valid Unicode): a
    short, stable disambiguator."""
    try:
        data = os.fsencode(identity)
    except UnicodeEncodeError:
        data = identity.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:8]


def disambiguated(name: str, identity: str) -> str:
    """``<name>_<name_tag(identity)>``: ``name`` made unique for the series ``identity``."""
    return f"{name}_{name_tag(identity)}"


def unreadable_file_name(file_name: str) -> str:
    """The name of the error file of an unreadable file that belongs to no series (``photo.jpg`` keeps its dot)."""
    return safe_stem(file_name, max_len=120, allow_dots=True, fallback="file")


_EXTENSION_SUFFIX = re.compile(r"_(nii|par|rec)$", re.IGNORECASE)


def nifti_name(file_name: str) -> str:
    """A file-name-safe name for an image file, unique per file name in a folder (one result folder each).

    ``<stem>.nii.gz`` -> ``<stem>`` (``case.nii.gz`` -> ``case``); ``.nii``, ``.PAR`` (or ``.REC``) keep their
    extension as a suffix as written (``scan.nii`` -> ``scan_nii``, ``exam.PAR`` -> ``exam_PAR``), so ``a.nii`` beside
    ``a.nii.gz`` never share a name. Where sanitizing changed the stem (``T1 post.nii.gz`` next to
    ``T1_post.nii.gz``), the extension is written otherwise (``.NII.GZ``), or a ``.nii.gz`` stem already ends like
    such a suffix (``x_nii.nii.gz``), ``_<8 hex digits>`` of the file name's hash is appended
    (``T1_post_3f0c9a1b``).
    """
    lower = file_name.lower()
    stem, ext = file_name, ""
    for candidate in (".nii.gz", ".nii", ".par", ".rec"):
        if lower.endswith(candidate):
            stem, ext = file_name[: -len(candidate)], file_name[-len(candidate):]
            break
    name = safe_stem(stem, max_len=120, allow_dots=True, fallback="image")
    exact = name == stem
    if ext == ".nii.gz":
        exact = exact and not _EXTENSION_SUFFIX.search(name)
    elif ext.lower() in (".nii", ".par", ".rec"):
        name += "_" + ext[1:]
    else:
        exact = False
    return name if exact else disambiguated(name, file_name)


def series_key(kind: str, source: str | os.PathLike[str], series_uid: str | None = None,
               stack: str | None = None) -> str:
    """The identity of a series: ``<folder>::<SeriesInstanceUID>`` for DICOM (several series may share a folder;
    ``<folder>::nouid-<hex>`` for one without a UID, :func:`derived_series_id`; one 3-D stack of a series that holds
    several: ``<folder>::<UID>#<stack label>``), the file's path for NIfTI/PAR. The watcher's job key; results
    record it as their owner."""
    if kind != "dicom":
        return os.fspath(source)
    return f"{os.fspath(source)}::{series_uid}" + (f"#{stack_label(stack)}" if stack else "")


# ------------------------------------------------------------------------------------------- what edgeseg writes

#: suffix of the finished result folder
RESULT_SUFFIX = ".edgeseg"
#: suffix of the error file written when a series fails
ERROR_SUFFIX = ".edgeseg-error.json"
#: marks a hidden result folder being written (``.<name>.edgeseg.partial-<random>``)
PARTIAL_MARK = ".edgeseg.partial-"
#: marks a hidden previous result being replaced (``.<name>.edgeseg.old-<random>``)
OLD_MARK = ".edgeseg.old-"
#: marks a hidden error file being written (``.<name>.edgeseg-error.json.partial-<random>``)
ERROR_PARTIAL_MARK = ERROR_SUFFIX + ".partial-"


def result_dir_name(name: str) -> str:
    """``<name>.edgeseg``: the folder name of finished results for the series named ``name``."""
    return f"{name}{RESULT_SUFFIX}"


def error_file_name(name: str) -> str:
    """``<name>.edgeseg-error.json``: the error file name for the series named ``name``."""
    return f"{name}{ERROR_SUFFIX}"


def _is_output_component(part: str) -> bool:
    if part.endswith(RESULT_SUFFIX) or part.endswith(ERROR_SUFFIX):
        return True
    if part.startswith(".") and (PARTIAL_MARK in part or OLD_MARK in part or ERROR_PARTIAL_MARK in part):
        return True
    return False


def is_edgeseg_output(path: StrPath) -> bool:
    """True if ``path`` is something edgeseg writes, or lies inside such a folder.

    Recognised: ``*.edgeseg`` folders and anything inside them, ``*.edgeseg-error.json``, and the hidden
    temporaries ``.*.edgeseg.partial-*``, ``.*.edgeseg.old-*``, ``.*.edgeseg-error.json.partial-*`` (and their
    contents). Works on relative or absolute paths, existing or not.
    """
    return any(_is_output_component(part) for part in Path(path).parts)
