"""``preview.png``: the mask over the image on a few representative slices, with a legend.

Geometry: both arrays are first reoriented (axis permutation and flips only, no resampling) with nibabel's
``io_orientation``/``apply_orientation`` to the closest RAS+ orientation. Panels are drawn in the radiological
convention: axial slices with anterior up and the patient's right on the image's left; coronal with superior up
and right on the left; sagittal with superior up and anterior on the left. All panels share one millimetre ->
pixel scale (the tallest panel is ``panel_height`` pixels), so anisotropic voxels are stretched to square
millimetres and the views are comparable.

Panels: three axial slices at the 25th, 50th and 75th percentile of the labelled voxels' height, plus one coronal
and one sagittal slice through the labelled voxels' centroid (the volume's centre when nothing is labelled).
Grey levels: the image windowed between its 1st and 99th percentile. Label n is drawn in :func:`label_color` (n)
at 45 % opacity; the legend lists the labels present.
"""
from __future__ import annotations

import colorsys
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeseg.runtime.read.volume import Volume
from edgeseg.runtime.write.statistics import MaskSummary, summarize_mask
from edgeseg.typing import StrPath

log = logging.getLogger(__name__)

PREVIEW_FILE = "preview.png"
_ALPHA = 0.45
_GAP = 4
_LEGEND_ROW = 14
_LEGEND_COL = 190


def label_color(value: int) -> tuple[int, int, int]:
    """A colour for label ``value`` (>= 1): hues spread by the golden ratio, alternating saturation/brightness,
    so neighbouring label numbers get clearly different colours."""
    hue = (value * 0.618033988749895) % 1.0
    sat = (0.95, 0.65, 0.85)[value % 3]
    val = (1.0, 0.85, 0.7)[(value // 3) % 3]
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def _canonical(volume: Volume, labelmap: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(volume.affine)
    image = apply_orientation(volume.array, ornt)
    labels = apply_orientation(np.asarray(labelmap), ornt)
    spacing = np.empty(3)
    for axis, (out_axis, _flip) in enumerate(ornt):
        spacing[int(out_axis)] = volume.spacing[axis]
    return image, labels, spacing


def _display(plane: np.ndarray) -> np.ndarray:
    """(first axis, second axis) plane of a RAS+ array -> (rows, cols) display: second axis up, first axis
    reversed left to right (radiological for axial/coronal, anterior-left for sagittal)."""
    return plane[::-1, ::-1].T


def _canonical_marginals(volume: Volume, summary: MaskSummary) -> list[np.ndarray]:
    """The summary's labelled voxels per index along each axis of the reoriented (closest RAS+) arrays."""
    from nibabel.orientations import io_orientation

    out: list[np.ndarray] = [np.zeros(0, np.int64)] * 3
    for axis, (out_axis, flip) in enumerate(io_orientation(volume.affine)):
        marginal = summary.marginals[axis]
        out[int(out_axis)] = marginal[::-1] if flip < 0 else marginal
    return out


def _percentiles(histogram: np.ndarray, qs: list[float]) -> np.ndarray:
    """numpy's (linear) percentiles ``qs`` of the indices counted by ``histogram``, without expanding them."""
    cumulative = np.cumsum(histogram)
    n = int(cumulative[-1])
    out = []
    for q in qs:
        h = (n - 1) * q / 100.0
        lo = math.floor(h)
        v_lo, v_hi = (int(np.searchsorted(cumulative, idx, side="right")) for idx in (lo, min(lo + 1, n - 1)))
        out.append(v_lo + (h - lo) * (v_hi - v_lo))
    return np.asarray(out)


def _window(image: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentile of every ``size // 1e6``-th voxel in C order. The samples are gathered by
    index: ``ravel()`` of a reoriented (flipped or transposed) view would copy the whole image first (0.8 s for
    512x512x400)."""
    step = max(1, image.size // 1_000_000)
    if image.flags.c_contiguous:
        sample = image.reshape(-1)[::step]
    else:
        sample = image[np.unravel_index(np.arange(0, image.size, step), image.shape)]
    lo, hi = np.percentile(sample, [1.0, 99.0])
    lo, hi = float(lo), float(hi)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def render_preview(volume: Volume, labelmap: np.ndarray, labels: Mapping[int, str], *,
                   panel_height: int = 256, summary: MaskSummary | None = None) -> Any:
    """Render the preview as a ``PIL.Image.Image`` (RGB); see the module docstring for what is drawn.
    ``summary``: the mask's :func:`~edgeseg.runtime.write.statistics.summarize_mask`, when the caller has it (the
    slices, centroid and legend come from it, not from another pass over the mask)."""
    from PIL import Image, ImageDraw, ImageFont

    if tuple(labelmap.shape) != tuple(volume.array.shape):
        raise ValueError(f"labelmap shape {labelmap.shape} differs from the volume's {volume.array.shape}")
    summary = summary if summary is not None else summarize_mask(volume, labelmap, labels)
    image, lab, spacing = _canonical(volume, labelmap)
    lo, hi = _window(image)
    present = summary.present
    top = max(present) if present else 0
    lut = np.zeros((top + 1, 3), dtype=np.uint8)
    for value in range(1, top + 1):
        lut[value] = label_color(value)

    shape = np.array(lab.shape)
    if summary.labelled:
        marginals = _canonical_marginals(volume, summary)
        n = summary.labelled
        centroid = np.array([int(round(float(np.dot(np.arange(m.size), m)) / n)) for m in marginals])
        zs = _percentiles(marginals[2], [25, 50, 75]).round().astype(int)
    else:
        centroid = shape // 2
        zs = np.array([shape[2] // 4, shape[2] // 2, (3 * shape[2]) // 4])
    zs = np.clip(zs, 0, shape[2] - 1)
    views = [(f"axial {z + 1}/{shape[2]}", image[:, :, z], lab[:, :, z], spacing[1], spacing[0]) for z in zs]
    y, x = int(centroid[1]), int(centroid[0])
    views.append((f"coronal {y + 1}/{shape[1]}", image[:, y, :], lab[:, y, :], spacing[2], spacing[0]))
    views.append((f"sagittal {x + 1}/{shape[0]}", image[x, :, :], lab[x, :, :], spacing[2], spacing[1]))

    # one millimetre -> pixel scale for all panels: the tallest panel is panel_height pixels high
    scale = panel_height / max(plane.shape[1] * row_mm for _, plane, _, row_mm, _ in views)
    panels = []
    for title, plane, lplane, row_mm, col_mm in views:
        grey = _display(plane)
        lbl = _display(lplane)
        rows, cols = grey.shape
        height = int(min(max(8, round(rows * row_mm * scale)), panel_height))
        width = int(min(max(8, round(cols * col_mm * scale)), 4 * panel_height))
        g8 = np.clip((grey - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
        g_img = Image.fromarray(np.ascontiguousarray(g8)).resize((width, height), Image.Resampling.BILINEAR)
        l_img = Image.fromarray(np.ascontiguousarray(lbl.astype(np.int32))).resize((width, height),
                                                                                     Image.Resampling.NEAREST)
        g = np.asarray(g_img, dtype=np.float32)
        lv = np.clip(np.asarray(l_img), 0, top)
        rgb = np.repeat(g[:, :, None], 3, axis=2)
        mask = lv > 0
        rgb[mask] = (1 - _ALPHA) * rgb[mask] + _ALPHA * lut[lv[mask]].astype(np.float32)
        panels.append((title, Image.fromarray(rgb.astype(np.uint8), "RGB")))

    total_w = sum(p.width for _, p in panels) + _GAP * (len(panels) + 1)
    n_cols = max(1, total_w // _LEGEND_COL)
    legend_h = (math.ceil(len(present) / n_cols) * _LEGEND_ROW + 2 * _GAP) if present else _LEGEND_ROW + 2 * _GAP
    title_h = _LEGEND_ROW
    canvas = Image.new("RGB", (total_w, title_h + panel_height + 2 * _GAP + legend_h), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x0 = _GAP
    for title, panel in panels:
        draw.text((x0, 1), title, fill=(220, 220, 220), font=font)
        canvas.paste(panel, (x0, title_h + _GAP))
        x0 += panel.width + _GAP
    y0 = title_h + panel_height + 2 * _GAP
    if not present:
        draw.text((_GAP, y0), "no structure found", fill=(220, 220, 220), font=font)
    for n, value in enumerate(present):
        col, row = n % n_cols, n // n_cols
        x, y = _GAP + col * _LEGEND_COL, y0 + row * _LEGEND_ROW
        draw.rectangle([x, y + 2, x + 9, y + 11], fill=label_color(value))
        name = str(labels.get(value, f"label_{value}"))[:28]
        draw.text((x + 13, y), f"{value} {name}", fill=(230, 230, 230), font=font)
    return canvas


def write_preview(path: StrPath, volume: Volume, labelmap: np.ndarray, labels: Mapping[int, str], *,
                  summary: MaskSummary | None = None) -> Path:
    """Render (:func:`render_preview`; ``summary`` as there) and save as PNG."""
    path = Path(path)
    render_preview(volume, labelmap, labels, summary=summary).save(str(path), format="PNG", optimize=False,
                                                                   compress_level=3)
    return path
