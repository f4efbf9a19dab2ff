"""Calibration and validation data: patches cut from real series, preprocessed exactly as the runtime does.

The same runtime code (read -> orient -> preprocess -> pad -> sliding-window tiles) produces the patches, so
the INT8 model is calibrated on the distribution it will see. Contrast variants (inverted, gamma) are derived
from real series to check that a model calibrated on one contrast does not break on another.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from edgeseg.bundle.schema import Part, Variant
from edgeseg.errors import EdgesegError, ExportError
from edgeseg.runtime.read.volume import Volume

log = logging.getLogger(__name__)

CONTRASTS = ("original", "inverted", "gamma0.5", "gamma2")


@dataclass(frozen=True)
class Series:
    """A readable series with a display name."""

    name: str
    volume: Volume


def find_series(folder: Path) -> list[Series]:
    """Every readable series below ``folder`` (NIfTI/PAR files and DICOM series); unreadable ones are logged
    and skipped. Raises :class:`ExportError` when none is readable."""
    from edgeseg.runtime.read import discover_series, read_series

    folder = Path(folder)
    if not folder.exists():
        raise ExportError(f"Calibration/validation folder {folder} does not exist.")
    refs = []
    candidates = [folder] if folder.is_file() else [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]
    for path in candidates:
        try:
            refs.extend(discover_series(path))
        except EdgesegError as err:
            log.warning("skipping %s: %s", path, err)
    series: list[Series] = []
    seen: set[str] = set()
    for ref in refs:
        key = str(getattr(ref, "uid", None) or getattr(ref, "path", ref))
        if key in seen:
            continue
        seen.add(key)
        try:
            vol = read_series(ref)
        except EdgesegError as err:
            log.warning("skipping series %s: %s", key, err)
            continue
        series.append(Series(vol.name, vol))
    if not series:
        raise ExportError(
            f"No readable series (NIfTI, PAR/REC or DICOM) in {folder}. Point --calibration at a folder of real "
            "MRI series like the ones the model will segment."
        )
    return series


def contrast_variant(volume: Volume, contrast: str) -> Volume:
    """A derived contrast of a real series: intensity inversion or a gamma curve on the [min, max] range."""
    if contrast == "original":
        return volume
    a = volume.array.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    span = max(hi - lo, 1e-6)
    unit = (a - lo) / span
    if contrast == "inverted":
        out = 1.0 - unit
    elif contrast.startswith("gamma"):
        out = unit ** float(contrast[len("gamma"):])
    else:
        raise ValueError(f"unknown contrast {contrast}")
    out = (out * span + lo).astype(np.float32)
    out[a == 0] = 0  # keep the background zero so the crop box is unchanged
    return replace(volume, array=out, name=f"{volume.name}-{contrast}")


def network_input(volume: Volume, variant: Variant, part: Part) -> np.ndarray:
    """The series preprocessed exactly as the runtime does for this part, padded to at least one patch."""
    from edgeseg.runtime.infer.sliding_window import pad_to_patch
    from edgeseg.runtime.preprocess import orient, preprocess

    padded, _ = pad_to_patch(preprocess(orient(volume, variant), part).data, part.patch_size)
    return padded


def _cut(padded: np.ndarray, sl: tuple[slice, ...]) -> np.ndarray:
    return np.ascontiguousarray(padded[(slice(None), *sl)][None], dtype=np.float32)


def tiles(padded: np.ndarray, part: Part) -> Iterator[np.ndarray]:
    """The (1, C, *patch) float32 sliding-window tiles the runtime would feed for this preprocessed series."""
    from edgeseg.runtime.infer.sliding_window import tile_slicers

    for sl in tile_slicers(padded.shape[1:], part.patch_size, part.tile_step_size):
        yield _cut(padded, sl)


def random_patches(padded: np.ndarray, part: Part, count: int, seed: int) -> Iterator[np.ndarray]:
    """``count`` patches at seeded random positions of the same preprocessed series (more calibration data from
    few series)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        start = [int(rng.integers(0, s - p + 1)) for s, p in zip(padded.shape[1:], part.patch_size)]
        yield _cut(padded, tuple(slice(a, a + p) for a, p in zip(start, part.patch_size)))


def calibration_patches(series: list[Series], variant: Variant, part: Part, limit: int,
                        seed: int = 0) -> list[np.ndarray]:
    """``limit`` patches spread over all series: their sliding-window tiles, topped up with patches at random
    positions when the tiles are fewer than ``limit`` (deterministic: seeded). Each series is preprocessed once."""
    inputs = [network_input(s.volume, variant, part) for s in series]
    pool: list[np.ndarray] = [t for padded in inputs for t in tiles(padded, part)]
    if not pool:
        raise ExportError(f"The calibration series gave no patches for part '{part.name}'.")
    if len(pool) < limit:
        missing = limit - len(pool)
        for i, padded in enumerate(inputs):
            share = missing // len(inputs) + (1 if i < missing % len(inputs) else 0)
            pool.extend(random_patches(padded, part, share, seed + i))
    if len(pool) <= limit:
        return pool
    idx = np.random.default_rng(seed).choice(len(pool), size=limit, replace=False)
    return [pool[i] for i in sorted(idx)]
