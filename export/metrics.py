"""Overlap measures used by export validation, accuracy-controlled quantization and the test-model trainer.

Dice is computed per label value; a label absent from both maps has no Dice (None) and is left out of means.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


def dice_per_class(pred: np.ndarray, ref: np.ndarray, classes: Iterable[int]) -> dict[int, float | None]:
    """Dice of each label value in ``classes`` (same grid); None where the label is in neither map."""
    out: dict[int, float | None] = {}
    for c in classes:
        p, r = pred == c, ref == c
        denom = int(p.sum()) + int(r.sum())
        out[int(c)] = 2.0 * int(np.logical_and(p, r).sum()) / denom if denom else None
    return out


def mean_dice(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Mean Dice over foreground classes 1..num_classes-1 present in ``a`` or ``b`` (1.0 if none is)."""
    scores = [d for d in dice_per_class(a, b, range(1, num_classes)).values() if d is not None]
    return float(np.mean(scores)) if scores else 1.0
