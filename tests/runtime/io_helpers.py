"""Pure helpers for the read/write tests (geometry variants, canonical comparison, file digests).

Geometry variants all describe the *same* voxels in world space (only the slicing differs), so a reader is right
when, after reorienting to the closest canonical (RAS+) orientation, affine and voxel values agree.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

def rotation(axis: int, degrees: float) -> np.ndarray:
    """4x4 world rotation about the x (0), y (1) or z (2) axis."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    r = np.eye(4)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r[i, i] = c
    r[j, j] = c
    r[i, j] = -s
    r[j, i] = s
    return r


def permuted(array: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels with the array axes permuted (new axis n = old axis perm[n])."""
    return array.transpose(perm), affine[:, [*perm, 3]]


def geometry_variants(array: np.ndarray, affine: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Axial (as stored), sagittal and coronal stacks of the same voxels, an oblique (rotated) stack, an
    anisotropic grid, and an axial stack whose k axis runs against the slice normal."""
    flip_k = np.eye(4)
    flip_k[2, 2] = -1
    flip_k[2, 3] = array.shape[2] - 1
    aniso = affine.copy()
    aniso[:3, :3] = affine[:3, :3] @ np.diag([0.7, 1.2, 2.5])
    return {
        "axial": (array, affine),
        "sagittal": permuted(array, affine, (1, 2, 0)),
        "coronal": permuted(array, affine, (0, 2, 1)),
        "oblique": (array, rotation(0, 20.0) @ rotation(1, -10.0) @ rotation(2, 15.0) @ affine),
        "anisotropic": (array, aniso),
        "reversed_k": (array[:, :, ::-1], affine @ flip_k),
    }


GEOMETRIES = ("axial", "sagittal", "coronal", "oblique", "anisotropic", "reversed_k")


def canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) reoriented to the closest RAS+ orientation (permutations/flips only)."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine))
    return np.asanyarray(img.dataobj), img.affine


def tree_digest(folder: Path, ignore: Callable[[Path], bool] | None = None) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (optionally ignoring some)."""
    digests = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if ignore is not None and ignore(path):
                continue
            digests[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests
