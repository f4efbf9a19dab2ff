"""nnU-Net's sliding-window tiling: where the tiles start, and the Gaussian importance map.

Axis order is the network's (nnU-Net's transposed z, y, x). Matches ``compute_steps_for_sliding_window`` and
``compute_gaussian`` of nnunetv2's ``inference/sliding_window_prediction.py`` (behaviour, not code).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def compute_steps(image_size: tuple[int, ...], tile_size: tuple[int, ...], tile_step_size: float) -> list[list[int]]:
    """Start index of every tile along each axis. ``image_size`` must be >= ``tile_size`` (pad first).

    The number of tiles per axis is ceil((image - tile) / (tile * step)) + 1, spread evenly so the last tile
    ends at the image border.
    """
    if not 0 < tile_step_size <= 1:
        raise ValueError(f"tile_step_size must be in (0, 1], got {tile_step_size}")
    steps: list[list[int]] = []
    for size, tile in zip(image_size, tile_size):
        if size < tile:
            raise ValueError(f"image size {image_size} is smaller than the tile {tile_size}; pad it first")
        target = tile * tile_step_size
        n = int(np.ceil((size - tile) / target)) + 1
        if n > 1:
            actual = (size - tile) / (n - 1)
            steps.append([int(np.round(actual * i)) for i in range(n)])
        else:
            steps.append([0])
    return steps


def tile_count(image_size: tuple[int, ...], tile_size: tuple[int, ...], tile_step_size: float) -> int:
    """How many network evaluations (without mirroring) the sliding window needs; pads small images first."""
    padded = tuple(max(s, t) for s, t in zip(image_size, tile_size))
    n = 1
    for axis in compute_steps(padded, tile_size, tile_step_size):
        n *= len(axis)
    return n


@lru_cache(maxsize=4)
def gaussian_importance(tile_size: tuple[int, ...], sigma_scale: float = 1.0 / 8,
                        value_scaling_factor: float = 10.0) -> np.ndarray:
    """nnU-Net's Gaussian importance map (float32, max = ``value_scaling_factor``, no zeros)."""
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(tile_size, dtype=np.float64)
    tmp[tuple(i // 2 for i in tile_size)] = 1
    g = gaussian_filter(tmp, [i * sigma_scale for i in tile_size], 0, mode="constant", cval=0)
    g /= np.max(g) / value_scaling_factor
    g = g.astype(np.float32).astype(np.float16)  # nnU-Net: float64 -> torch fp16 rounds via float32
    nonzero = g != 0
    g[~nonzero] = np.min(g[nonzero])
    g.setflags(write=False)
    return g
