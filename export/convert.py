"""torch network -> ONNX (checked) -> OpenVINO IR (FP32, optionally FP16).

The ONNX graph has one static input ``image`` (1, C, *patch) float32 and one output ``logits`` (1, K, *patch):
static shapes, because dynamic-shape 3-D convolutions produced garbage on some Intel iGPUs (see PITFALLS).
The folds of a part are averaged inside the graph, so the runtime runs one model per part.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

from edgeseg._deps import require
from edgeseg.errors import ExportError

log = logging.getLogger(__name__)

OPSET = 17


def export_onnx(module: Any, input_shape: Sequence[int], path: Path) -> Path:
    """Export ``module`` (eval mode, deep supervision off) to ONNX at ``path`` and run onnx's full checker."""
    torch = require("torch", "ONNX export")
    onnx = require("onnx", "ONNX export")
    module = module.eval()
    example = torch.zeros(tuple(input_shape), dtype=torch.float32)
    with torch.no_grad():
        out = module(example)
    if isinstance(out, (list, tuple)):
        raise ExportError(
            "The network returns several outputs (deep supervision is on); edgeseg exports with deep supervision "
            "off. Build the network with enable_deep_supervision=False."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter warns about InstanceNorm's training flag
        try:
            torch.onnx.export(module, (example,), str(path), opset_version=OPSET, input_names=["image"],
                              output_names=["logits"], dynamo=False, do_constant_folding=True)
        except Exception as err:  # noqa: BLE001
            raise ExportError(f"torch.onnx.export failed: {err}") from err
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"The exported ONNX model {path} fails onnx's checker: {err}") from err
    log.info("exported ONNX %s (opset %d, input %s)", path.name, OPSET, tuple(input_shape))
    return path


def to_openvino(onnx_path: Path) -> Any:
    """Read the ONNX file into an ``openvino.Model`` (static shapes kept)."""
    import openvino as ov

    try:
        return ov.convert_model(str(onnx_path))
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"OpenVINO could not convert {onnx_path}: {err}") from err


def save_ir(model: Any, xml_path: Path, fp16: bool = False) -> tuple[Path, Path]:
    """Save an IR pair; ``fp16`` compresses weights to FP16 (the runtime decompresses on CPU)."""
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)
    return xml_path, xml_path.with_suffix(".bin")
