"""Philips PAR/REC -> :class:`Volume` through nibabel's PAR/REC reader."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.naming import nifti_name
from edgeseg.runtime.read._nifti import check_affine, nibabel_float32
from edgeseg.runtime.read.volume import Volume

log = logging.getLogger(__name__)


def is_parrec_path(path: Path) -> bool:
    """True for names ending in .par or .rec (any case)."""
    return path.suffix.lower() in (".par", ".rec")


def par_candidates(rec: Path) -> tuple[Path, ...]:
    """The names the .PAR header of the data file ``rec`` may have (``.PAR``, ``.par``, ``.Par``), in that order."""
    return tuple(rec.with_suffix(suffix) for suffix in (".PAR", ".par", ".Par"))


def rec_files(par: Path) -> list[Path]:
    """The data files beside the header ``par`` (``.REC``, ``.rec``, ``.Rec``, in that order) that exist as names
    (a symbolic link counts: whether to follow it is the caller's rule)."""
    return [rec for rec in (par.with_suffix(suffix) for suffix in (".REC", ".rec", ".Rec")) if os.path.lexists(rec)]


def par_of(path: Path) -> Path:
    """The .PAR header belonging to ``path`` (a .PAR or .REC file), keeping the case of the suffix."""
    if path.suffix.lower() == ".par":
        return path
    for candidate in par_candidates(path):
        if candidate.exists():
            return candidate
    return path.with_suffix(".PAR" if path.suffix.isupper() else ".par")


def read_parrec(path: Path) -> Volume:
    """Read a Philips PAR/REC pair into a :class:`Volume`.

    Geometry: nibabel's PAR/REC image, shape (I, J, K) float32 with nibabel's default scaling ("dv", the
    values the console displays); ``affine`` is nibabel's voxel -> RAS+ mm affine. Several dynamics, echoes or
    image types (a 4th dimension > 1) raise :class:`InvalidSeriesError`.
    """
    import nibabel as nib

    par = par_of(Path(path))
    try:
        img: Any = nib.load(str(par))
    except FileNotFoundError as err:
        raise InvalidSeriesError(
            f"{par}: the PAR header or its REC data file is missing ({err}). Copy both files of the pair."
        ) from err
    except Exception as err:
        raise InvalidSeriesError(
            f"{par} is not a readable Philips PAR/REC pair ({type(err).__name__}: {err}). Re-export the series "
            "(PAR/REC v4.x or DICOM)."
        ) from err
    vol = Volume(
        array=nibabel_float32(img, par, "the REC data", "it is probably truncated. Copy the REC file again."),
        affine=check_affine(img.affine, par),
        source=par,
        kind="parrec",
        name=nifti_name(par.name),
        description=par.name,
    )
    log.info("read PAR/REC %s: shape %s", par, vol.shape)
    return vol
