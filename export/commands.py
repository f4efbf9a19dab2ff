"""``edgeseg export``: the build-machine command (heavy imports happen inside the handler)."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from edgeseg.bundle.schema import PRECISIONS
from edgeseg.export import totalseg

log = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="nnU-Net v2 model folder(s)/zip -> INT8 OpenVINO model bundle",
        description="Export nnU-Net v2 trained-model folders (or release zips) into one edgeseg bundle: ONNX, "
                    "OpenVINO IR, INT8 calibrated on real series, validated against FP32. Several MODELs form one "
                    "variant whose parts are merged into one label map (e.g. total_mr Dataset850 + Dataset851).")
    p.add_argument("models", nargs="*", type=Path, metavar="MODEL",
                   help="nnU-Net results folder(s) or release zip(s): the parts of the default variant")
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "MODEL"),
                   help="a named variant and its parts, most accurate first; repeat for several (e.g. "
                        "--variant 1.5mm part1 part2 --variant 3mm fast_model)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--calibration", type=Path, required=True,
                   help="folder of real NIfTI/DICOM series for INT8 calibration")
    p.add_argument("--validation", type=Path, help="held-out series for the report (default: the calibration set)")
    p.add_argument("--labels", type=Path, help='merged label map JSON {"1": "spleen", ...} (default: parts in order)')
    p.add_argument("--folds", nargs="+", help="folds to export (default: all present); several are ensembled")
    p.add_argument("--precisions", default="fp32,int8", help="comma list of fp32, fp16, int8 (default fp32,int8)")
    p.add_argument("--totalseg", action="store_true",
                   help=f"TotalSegmentator's wrapping of nnU-Net (as release {totalseg.RELEASE} runs it): RAS "
                        "reorientation, input resampled to the task spacing and truncated to int32, fold 0, "
                        "tile step 0.8, no mirroring, parts merged in order, labels back to the input grid with "
                        "order 0")
    p.add_argument("--totalseg-order", type=int, default=totalseg.DEFAULT_ORDER, choices=range(6),
                   help="with --totalseg: TotalSegmentator's --resampling_order of the input (default 1, its default "
                        "since 2.16.0; 3 reproduces releases up to 2.15.0)")
    p.add_argument("--reorient", choices=("RAS", "none"), help="reorient input before the network (default: RAS "
                   "with --totalseg, else none = array as stored, like nnU-Net's SimpleITK reader)")
    p.add_argument("--tile-step", type=float, help="sliding-window tile step (default 0.5; 0.8 with --totalseg)")
    p.add_argument("--mirroring", choices=("auto", "on", "off"), default="auto",
                   help="test-time mirroring (auto: as the trainer allows)")
    p.add_argument("--calibration-patches", type=int, default=20, help="NNCF subset size (default 20)")
    p.add_argument("--bias-correction", choices=("fast", "full"), default="fast",
                   help="NNCF bias correction (fast: half the time and memory)")
    p.add_argument("--accuracy-control", action="store_true",
                   help="NNCF accuracy-controlled quantization with a maximum Dice drop")
    p.add_argument("--max-dice-drop", type=float, default=0.01, help="with --accuracy-control (default 0.01)")
    p.add_argument("--contrasts", default="original,inverted,gamma0.5,gamma2",
                   help="contrast variants of the validation series for the report")
    p.add_argument("--name", default="edgeseg-bundle", help="bundle name")
    p.add_argument("--description", default="", help="free text")
    p.add_argument("--intended-use", default="", help="e.g. 'research only'")
    p.add_argument("--bundle-version", default="", help="the bundle's version, named with its name in every result's "
                                                        "SeriesDescription (default: none; results name the first "
                                                        "digits of the bundle.json sha256 instead)")
    p.add_argument("--not-for-clinical-use", action="store_true",
                   help="mark the bundle not for clinical use: every SEG/SR it makes says so in its description")
    p.add_argument("--gate-min-dice", type=float, default=0.95,
                   help="fidelity gate of INT8/FP16 against FP32: lowest Dice of any structure in any validation "
                        "series and contrast (default 0.95); a precision below it is marked failed in bundle.json "
                        "and the runtime's precision auto never uses it")
    p.add_argument("--remedies", default="accuracy_control,float_layers,bf16",
                   help="what export tries, in order, when INT8 fails the gate: accuracy_control (NNCF's "
                        "accuracy-controlled quantization), float_layers (a per-layer sensitivity pass ranks the "
                        "quantized operations; the 1, 2, 4 ... most sensitive are kept in float), bf16 (FP32 with "
                        "BF16 inference, where the CPU has it); 'none' tries nothing")
    p.add_argument("--remedy-time", type=float, default=300.0,
                   help="seconds the remedies may take in all, after the base export (default 300); a "
                        "remedy that cannot fit is not started, one running when the time is up is stopped, and "
                        "INT8 stays failed with what was tried recorded")
    p.add_argument("--time-budget", type=float, default=900.0,
                   help="seconds the whole export may take (default 900; 0: no bound): the base export (conversion, "
                        "quantization, validation) always finishes, the remedies get only what is left of this and "
                        "of --remedy-time")
    p.add_argument("--gate-mean-dice", type=float, default=0.99,
                   help="fidelity gate: lowest mean Dice over structures of any validation series and contrast "
                        "(default 0.99)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=run_export)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the export runs, SIGTERM raises KeyboardInterrupt (as SIGINT does), so the pipeline's clean-up runs.
    The handler only raises (handlers must not log)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_export(args: argparse.Namespace) -> int:
    from edgeseg.errors import EXIT_OK, ConfigError
    from edgeseg.export.gate import Gate
    from edgeseg.export.pipeline import REMEDIES, ExportSettings, VariantSpec, export_bundle
    from edgeseg.export.quantize import QuantizeSettings

    variants = [VariantSpec(v[0], tuple(Path(m) for m in v[1:]), rank=i) for i, v in enumerate(args.variant)]
    if args.models:
        variants.insert(0, VariantSpec("default", tuple(args.models), rank=0))
        variants = [VariantSpec(v.name, v.models, rank=i) for i, v in enumerate(variants)]
    if not variants or any(not v.models for v in variants):
        raise ConfigError("Name at least one model: `edgeseg export MODEL --out B --calibration DIR` or "
                          "`--variant NAME MODEL [MODEL...]`.")
    precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ConfigError(f"--precisions: unknown {bad}; use {', '.join(PRECISIONS)} (one or more).")
    remedies = tuple(r.strip() for r in args.remedies.split(",") if r.strip() and r.strip() != "none")
    unknown = [r for r in remedies if r not in REMEDIES]
    if unknown:
        raise ConfigError(f"--remedies: unknown {unknown}; use {', '.join(REMEDIES)} (in the order to try) or none.")
    settings = ExportSettings(
        precisions=precisions, folds=tuple(args.folds) if args.folds else None, totalseg=args.totalseg,
        totalseg_order=args.totalseg_order,
        reorient=args.reorient, tile_step_size=args.tile_step, mirroring=args.mirroring, labels_file=args.labels,
        quantize=QuantizeSettings(subset_size=args.calibration_patches,
                                  fast_bias_correction=args.bias_correction == "fast",
                                  accuracy_control=args.accuracy_control, max_dice_drop=args.max_dice_drop),
        validation_contrasts=tuple(c.strip() for c in args.contrasts.split(",") if c.strip()),
        name=args.name, description=args.description, intended_use=args.intended_use,
        version=args.bundle_version, not_for_clinical_use=args.not_for_clinical_use,
        gate=Gate(min_dice=args.gate_min_dice, mean_dice=args.gate_mean_dice),
        remedies=remedies, remedy_time_s=args.remedy_time,
        time_budget_s=args.time_budget if args.time_budget > 0 else None,
    )
    with _terminate_as_interrupt():  # SIGTERM unwinds like Ctrl+C: the partial bundle folder is removed
        bundle = export_bundle(variants, args.out, args.calibration, settings, args.validation, force=args.force)
    report = json.loads((bundle.path / "validation.json").read_text())
    print(f"bundle written: {bundle.path}")
    for prec, s in report["summary"].items():
        print(f"  {prec} vs fp32: mean Dice {s['mean_dice_vs_fp32']:.4f} "
              f"(worst series {s['worst_series_mean_dice']:.4f})")
    for prec, verdict in bundle.precision_verdicts.items():
        print(f"  {prec} fidelity gate: {verdict['verdict'].upper()} (lowest structure Dice {verdict.get('min_dice')}, "
              f"lowest mean {verdict.get('mean_dice')}; gate {verdict.get('gate')}"
              + (f"; after {verdict['remedy']}" if verdict.get("remedy") else "") + ")")
        for t in verdict.get("remedies_tried", []):
            print(f"    remedy {t['remedy']}: {t['verdict']}"
                  + (f" in {t['seconds']:.0f} s" if t.get("seconds") is not None else "")
                  + (f" ({t['reason']})" if t.get("reason") else ""))
    budget = report.get("time_budget") or {}
    if budget:
        print(f"  time: base export {budget.get('base_export_s')} s, remedies {report.get('remedies_s', 0)} s "
              f"(budget {budget.get('time_budget_s')} s, remedy time {budget.get('remedy_time_s')} s)")
    for t in report["fp32_vs_torch"]:
        print(f"  fp32 IR vs torch [{t['variant']}/{t['part']}]: argmax agreement {t['argmax_agreement']:.6f}, "
              f"max |logit diff| {t['max_abs_logit_diff']:.2e}")
    for lat in report["latency_per_tile"]:
        if "seconds_per_tile" in lat:
            print(f"  latency [{lat['variant']}/{lat['part']}] {lat['precision']}: "
                  f"{lat['seconds_per_tile']:.3f} s/tile")
    return EXIT_OK
