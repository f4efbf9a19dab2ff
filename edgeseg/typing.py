"""Type aliases used across edgeseg.

Axis conventions (stated once, used everywhere):

* ``Volume.array`` and every mask we write are indexed (i, j, k) as in NIfTI/nibabel, and ``affine`` maps
  (i, j, k, 1) to RAS+ world millimetres.
* Inside the network pipeline arrays are in nnU-Net's order, which is the SimpleITK order (k, j, i) of the
  (possibly reoriented) volume, then permuted by the plans' ``transpose_forward``.
"""
from __future__ import annotations

from typing import Union
from os import PathLike

Spacing = tuple[float, float, float]
Shape3 = tuple[int, int, int]
StrPath = Union[str, "PathLike[str]"]
