"""The :class:`SeriesGeometry`: the size of a series' volume as its headers describe it, before pixels are read.

The header-level view of :class:`~edgeseg.runtime.read.volume.Volume`'s grid: what the time-budget planner
(:mod:`edgeseg.runtime.plan`) needs to predict the work, and what the watcher checks against the read limits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import numpy.typing as npt

from edgeseg.runtime.read.volume import Volume
from edgeseg.typing import Shape3, Spacing


@dataclass(frozen=True)
class SeriesGeometry:
    """Size of the input volume as the headers describe it.

    ``shape`` and ``spacing`` are per voxel axis (i, j, k) as in :class:`~edgeseg.runtime.read.volume.Volume`
    (for DICOM: i along a row = Columns, j down a column = Rows, k across slices). ``world_axes[a]`` is the
    patient axis (0 = x/L-R, 1 = y/A-P, 2 = z/S-I) voxel axis ``a`` runs closest to; (0, 1, 2) when unknown.
    """

    shape: Shape3
    spacing: Spacing
    world_axes: tuple[int, int, int] = (0, 1, 2)

    @property
    def voxels(self) -> int:
        return int(self.shape[0]) * int(self.shape[1]) * int(self.shape[2])

    @classmethod
    def from_volume(cls, volume: Volume) -> SeriesGeometry:
        """The geometry of an already read :class:`~edgeseg.runtime.read.volume.Volume`."""
        return cls(volume.shape, volume.spacing, world_axes([volume.affine[:3, a] for a in range(3)]))


def world_axes(directions: Iterable[npt.ArrayLike]) -> tuple[int, int, int]:
    """For each voxel axis direction (i, j, k), the patient axis it runs closest to; (0, 1, 2) if ambiguous."""
    axes = tuple(int(np.argmax(np.abs(np.asarray(d, dtype=float)))) for d in directions)
    if len(axes) != 3 or len(set(axes)) != 3:
        return (0, 1, 2)
    return (axes[0], axes[1], axes[2])
