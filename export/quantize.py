"""INT8 post-training quantization with NNCF, calibrated on real preprocessed patches.

Default: ``nncf.quantize`` with the PERFORMANCE preset (symmetric weights and activations, what NNCF
recommends for CPU); InstanceNorm (MVN) stays in float between quantized convolutions. ``fast_bias_correction``
halves time and memory (measured in PITFALLS) at no measured Dice cost. Optional accuracy-controlled mode:
``nncf.quantize_with_accuracy_control`` keeps layers in float until the Dice drop against the FP32 model on
validation patches is at most ``max_dice_drop``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg._deps import require
from edgeseg.errors import ExportError
from edgeseg.export.budget import NO_DEADLINE, BudgetSpent, Deadline
from edgeseg.export.metrics import mean_dice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeSettings:
    """Recorded in the bundle's validation report."""

    subset_size: int = 20
    fast_bias_correction: bool = True
    preset: str = "performance"
    accuracy_control: bool = False
    max_dice_drop: float = 0.01
    #: names of operations kept in floating point (nncf.IgnoredScope): the fidelity gate's "float_layers" remedy
    #: (the most sensitive operations by export/sensitivity.py)
    ignored: tuple[str, ...] = ()
    #: with accuracy_control: NNCF's bound on its revert iterations (None: unbounded)
    max_iterations: int | None = None


def quantize(model: Any, calibration: list[np.ndarray], settings: QuantizeSettings,
             validation: list[np.ndarray] | None = None, fp32_compiled: Any = None,
             deadline: Deadline = NO_DEADLINE) -> Any:
    """Quantize an ``openvino.Model``; returns the INT8 ``openvino.Model``. ``deadline`` is checked at every
    calibration and validation patch NNCF takes (:class:`BudgetSpent` stops it)."""
    nncf = require("nncf", "INT8 quantization")
    preset = nncf.QuantizationPreset.PERFORMANCE if settings.preset == "performance" else \
        nncf.QuantizationPreset.MIXED

    def checked(patch: np.ndarray) -> np.ndarray:
        deadline.check("quantization")
        return patch

    calib = nncf.Dataset(calibration, checked)
    subset = min(settings.subset_size, len(calibration))
    ignored = nncf.IgnoredScope(names=list(settings.ignored), validate=False) if settings.ignored else None
    try:
        if not settings.accuracy_control:
            return nncf.quantize(model, calib, preset=preset, subset_size=subset,
                                 fast_bias_correction=settings.fast_bias_correction,
                                 target_device=nncf.TargetDevice.CPU, ignored_scope=ignored)
        if not validation or fp32_compiled is None:
            raise ExportError("Accuracy-controlled quantization needs validation patches and the FP32 model.")
        num_classes = int(model.outputs[0].get_partial_shape()[1].get_length())
        references = [np.asarray(fp32_compiled({0: p})[0])[0].argmax(0) for p in validation]
        items = list(zip(validation, references))

        def validate(compiled: Any, data: Any) -> tuple[float, list[float]]:
            scores = []
            for x, ref in data:
                deadline.check("accuracy-controlled quantization")
                scores.append(mean_dice(np.asarray(compiled({0: x})[0])[0].argmax(0), ref, num_classes))
            return float(np.mean(scores)), scores

        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        restorer = (AdvancedAccuracyRestorerParameters(max_num_iterations=settings.max_iterations)
                    if settings.max_iterations is not None else None)
        return nncf.quantize_with_accuracy_control(
            model, calib, nncf.Dataset(items), validation_fn=validate, max_drop=settings.max_dice_drop,
            drop_type=nncf.DropType.ABSOLUTE, preset=preset, subset_size=subset,
            fast_bias_correction=settings.fast_bias_correction, target_device=nncf.TargetDevice.CPU,
            ignored_scope=ignored, advanced_accuracy_restorer_parameters=restorer,
        )
    except (ExportError, BudgetSpent):
        raise
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"NNCF quantization failed: {type(err).__name__}: {err}") from err
