"""The export pipeline: nnU-Net v2 model(s) -> ONNX -> OpenVINO IR -> INT8 -> validated bundle.

Everything is built in a temporary sibling folder ``.<bundle>.partial-<pid>-*`` and renamed to its final name
only when complete, so a failed export (bad input, disk full) never leaves a folder that looks like a bundle. An
interrupted export (Ctrl+C; SIGTERM, which ``edgeseg export`` turns into the same exception) removes its partial
folder on the way out; one left by an export that was killed outright (SIGKILL, power loss) is removed by the next
export to the same place once its process is gone.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgeseg import __version__
from edgeseg.bundle.hashing import hash_tree, sha256_file
from edgeseg.bundle.schema import (
    BUNDLE_FILE, SCHEMA_VERSION, Bundle, ModelFile, Normalization, Part, Resampling, Variant, bundle_to_dict,
    load_bundle, parse_bundle,
)
from edgeseg.errors import EdgesegError, ExportError
from edgeseg.export.budget import NO_DEADLINE, BudgetSpent, Deadline, remedy_deadline
from edgeseg.export.model_folder import ModelFolder, open_model
from edgeseg.export.gate import Gate, judge
from edgeseg.export.metrics import dice_per_class, mean_dice
from edgeseg.export import totalseg as ts_wrapper
from edgeseg.export.quantize import QuantizeSettings
from edgeseg.runtime.write.atomic import write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VariantSpec:
    """One variant to export: its name, accuracy rank (0 = best) and the model parts (paths or zips)."""

    name: str
    models: tuple[Path, ...]
    rank: int = 0


@dataclass(frozen=True)
class ExportSettings:
    """Everything that decides what the bundle contains; recorded in the validation report."""

    precisions: tuple[str, ...] = ("fp32", "int8")
    folds: tuple[str, ...] | None = None
    totalseg: bool = False
    #: with totalseg: TotalSegmentator's --resampling_order (1 since 2.16.0, 3 up to 2.15.0)
    totalseg_order: int = ts_wrapper.DEFAULT_ORDER
    reorient: str | None = None  # None: "RAS" with totalseg, else "none"
    tile_step_size: float | None = None  # None: 0.8 with totalseg, else nnU-Net's 0.5
    mirroring: str = "auto"  # auto: as the trainer allows (off for *NoMirroring; off with totalseg)
    labels_file: Path | None = None
    quantize: QuantizeSettings = field(default_factory=QuantizeSettings)
    validation_contrasts: tuple[str, ...] = ("original", "inverted", "gamma0.5", "gamma2")
    torch_check_patches: int = 4
    latency_repeats: int = 2
    name: str = "edgeseg-bundle"
    description: str = ""
    intended_use: str = ""
    version: str = ""
    not_for_clinical_use: bool = False
    #: the fidelity gate INT8/FP16 must pass against FP32 (export/gate.py)
    gate: Gate = field(default_factory=Gate)
    #: what export tries, in order, when INT8 fails the gate (see _remedies; () tries nothing)
    remedies: tuple[str, ...] = ("accuracy_control", "float_layers", "bf16")
    #: seconds the remedies may take in all, counted from the end of the base export (None: no bound of their own)
    remedy_time_s: float | None = 300.0
    #: seconds the whole export may take (None: no bound): the base export always finishes, the remedies get what
    #: is left of it (export/budget.py); 900 s is the issue's 15 minutes for the TotalSegmentator-sized parts
    time_budget_s: float | None = 900.0
    #: NNCF accuracy control's bound on the layers it reverts one by one
    remedy_iterations: int = 8


def _merged_labels(parts: Sequence[ModelFolder], labels_file: Path | None) -> dict[int, str]:
    if labels_file is not None:
        try:
            raw = json.loads(Path(labels_file).read_text(encoding="utf-8"))
            return {int(k): str(v) for k, v in raw.items()}
        except (OSError, ValueError) as err:
            raise ExportError(f"--labels {labels_file}: expected a JSON object {{\"1\": \"spleen\", ...}} ({err}).") \
                from err
    merged: dict[int, str] = {}
    for part in parts:
        for _, name in part.foreground_labels.items():
            if name not in merged.values():
                merged[len(merged) + 1] = name
    return merged


def _label_map(part: ModelFolder, merged: dict[int, str]) -> dict[int, int]:
    by_name = {v: k for k, v in merged.items()}
    missing = [n for n in part.foreground_labels.values() if n not in by_name]
    if missing:
        raise ExportError(
            f"Part {part.name} has labels {missing} that the merged label map does not name; add them to --labels."
        )
    return {value: by_name[name] for value, name in part.foreground_labels.items()}


def _resampling(kwargs: dict[str, Any]) -> Resampling:
    return Resampling(order=int(kwargs.get("order", 3)), order_z=int(kwargs.get("order_z", 0)),
                      force_separate_z=kwargs.get("force_separate_z"), anisotropy_threshold=3.0)


def _model_file(precision: str, rel_dir: str, xml: Path, binf: Path) -> ModelFile:
    return ModelFile(precision, f"{rel_dir}/{xml.name}", f"{rel_dir}/{binf.name}")


def _part(part: ModelFolder, merged: dict[int, str], settings: ExportSettings, rel_dir: str,
          mirror_axes: tuple[int, ...] | None) -> Part:
    """The bundle's description of one model part, without its model files yet."""
    cfg = part.configuration
    fn_data = cfg.get("resampling_fn_data", "resample_data_or_seg_to_shape")
    fn_prob = cfg.get("resampling_fn_probabilities", "resample_data_or_seg_to_shape")
    for fn in (fn_data, fn_prob):
        if fn not in ("resample_data_or_seg_to_shape", "resample_data_or_seg_to_spacing"):
            raise ExportError(f"{part.path}: resampling function '{fn}' is not supported by the edgeseg runtime.")
    props = part.plans.get("foreground_intensity_properties_per_channel", {})
    norms = tuple(Normalization(scheme, bool(cfg["use_mask_for_norm"][c]),
                                {k: float(v) for k, v in props.get(str(c), {}).items()})
                  for c, scheme in enumerate(cfg["normalization_schemes"]))
    # TotalSegmentator runs nnU-Net without test-time augmentation whatever the trainer allows
    use_mirroring = {"on": True, "off": False}.get(settings.mirroring,
                                                    mirror_axes is not None and not settings.totalseg)
    step = settings.tile_step_size or (ts_wrapper.TILE_STEP if settings.totalseg else 0.5)
    return Part(
        name=part.name,
        label_map=_label_map(part, merged),
        num_input_channels=part.num_input_channels,
        num_outputs=part.num_outputs,
        spacing=tuple(float(s) for s in cfg["spacing"]),
        patch_size=tuple(int(s) for s in cfg["patch_size"]),
        transpose_forward=tuple(int(i) for i in part.plans.get("transpose_forward", [0, 1, 2])),
        transpose_backward=tuple(int(i) for i in part.plans.get("transpose_backward", [0, 1, 2])),
        normalization=norms,
        resampling_data=_resampling(cfg.get("resampling_fn_data_kwargs", {})),
        resampling_probabilities=_resampling(cfg.get("resampling_fn_probabilities_kwargs", {"order": 1})),
        tile_step_size=float(step),
        use_gaussian=True,
        use_mirroring=bool(use_mirroring),
        mirror_axes=tuple(mirror_axes) if mirror_axes else (0, 1, 2),
        folds=tuple(part.checkpoints),
        models={},
        source={
            "folder": part.path.name, "dataset": part.dataset_name, "trainer": part.trainer,
            "plans": part.plans_name, "configuration": part.configuration_name,
            "checkpoints_sha256": {f: sha256_file(p) for f, p in part.checkpoints.items()},
            "plans_sha256": sha256_file(part.path / "plans.json"),
            "dataset_json_sha256": sha256_file(part.path / "dataset.json"),
            "dir": rel_dir,
        },
    )


def _versions() -> dict[str, str]:
    out = {"edgeseg": __version__, "python": platform.python_version()}
    for mod in ("openvino", "nncf", "onnx", "torch", "numpy", "dynamic_network_architectures", "nnunetv2"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            continue
    return out


def _write_json(path: Path, data: Any) -> None:
    write_json_atomic(path, data, indent=1, default=str)


def _bundle(root: Path, settings: ExportSettings, labels: dict[int, str], variants: Sequence[Variant],
            validation: str | None, verdicts: dict[str, dict[str, Any]] | None = None) -> Bundle:
    """The bundle as exported so far (every file below ``root`` hashed), checked by the schema's own loader: it
    is serialised as bundle.json would be and parsed back."""
    built = Bundle(
        path=root,
        schema_version=SCHEMA_VERSION,
        name=settings.name,
        description=settings.description,
        intended_use=settings.intended_use,
        labels=dict(sorted(labels.items())),
        variants=tuple(variants),
        files=hash_tree(root),
        validation_report=validation,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=_versions(),
        version=settings.version,
        not_for_clinical_use=settings.not_for_clinical_use,
        precision_verdicts=dict(verdicts or {}),
    )
    return parse_bundle(bundle_to_dict(built), root)


class Progress:
    """Logs long export steps with elapsed time."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        #: ``time.monotonic()`` at the start (the export's, when it does not say otherwise)
        self.started = time.monotonic()

    def __call__(self, msg: str, *args: Any) -> None:
        log.info("[%6.1fs] " + msg, time.perf_counter() - self.t0, *args)


def export_bundle(variants: Sequence[VariantSpec], out: Path, calibration: Path, settings: ExportSettings,
                  validation: Path | None = None, force: bool = False) -> Bundle:
    """Export ``variants`` into the bundle folder ``out`` (see module docstring); returns the loaded bundle."""
    started = time.monotonic()
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; choose another --out or pass --force to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    try:
        _export_into(variants, work, calibration, settings, validation, started)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            work.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(out)
        return load_bundle(out)
    except OSError as err:
        shutil.rmtree(work, ignore_errors=True)
        raise ExportError(f"Writing the bundle failed ({err}); is the disk full? Nothing was left at {out}.") from err
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the ``.<out>.partial-<pid>-*`` folders beside ``out`` whose export process is gone (killed before it
    could clean up); returns them. A partial folder of a running export, or one without a pid, is left alone."""
    removed = []
    for partial in Path(out).parent.glob(f".{Path(out).name}.partial-*"):
        pid_text = partial.name[len(f".{Path(out).name}.partial-"):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        shutil.rmtree(partial, ignore_errors=True)
        log.info("removed %s, left by an export (pid %s) that did not finish", partial, pid_text)
        removed.append(partial)
    return removed


def _export_into(variants: Sequence[VariantSpec], root: Path, calibration: Path, settings: ExportSettings,
                 validation_dir: Path | None, started: float | None = None) -> Bundle:
    from edgeseg.export.calibration import find_series
    from edgeseg.export.convert import export_onnx, save_ir, to_openvino
    from edgeseg.export.network import fold_ensemble, load_fold_networks, mirroring_axes_from_checkpoint

    progress = Progress()
    scratch = root / ".scratch"
    scratch.mkdir()
    opened: list[tuple[VariantSpec, list[ModelFolder]]] = []
    for spec in variants:
        parts: list[ModelFolder] = []
        for model in spec.models:
            parts.extend(open_model(model, settings.folds or (ts_wrapper.FOLDS if settings.totalseg else None),
                                    workdir=scratch))
        opened.append((spec, parts))
    labels = _merged_labels([p for _, parts in opened for p in parts], settings.labels_file)
    progress("opened %d variant(s): %s", len(opened),
             "; ".join(f"{s.name}: {', '.join(p.name for p in ps)}" for s, ps in opened))

    calib_series = find_series(calibration)
    valid_series = find_series(validation_dir) if validation_dir else calib_series
    progress("calibration series: %s; validation series: %s", [s.name for s in calib_series],
             [s.name for s in valid_series])

    bundle_variants: list[Variant] = []
    torch_checks: list[dict[str, Any]] = []
    quant_times: dict[str, float] = {}
    ov_models: dict[tuple[str, str], Any] = {}
    modules: dict[tuple[str, str], Any] = {}
    for spec, parts in opened:
        reorient = settings.reorient or ("RAS" if settings.totalseg else "none")
        pre, follows = None, ""
        if settings.totalseg:
            first = parts[0]
            pre = ts_wrapper.pre_resample(first.dataset_name, first.configuration["spacing"], settings.totalseg_order)
            follows = ts_wrapper.follows(first.dataset_name, settings.totalseg_order)
        entries: list[Part] = []
        for folder in parts:
            rel = f"{spec.name}/{folder.name}"
            nets = load_fold_networks(folder)
            module = fold_ensemble(nets)
            mirror = mirroring_axes_from_checkpoint(folder)
            entry = _part(folder, labels, settings, rel, mirror)
            onnx_path = export_onnx(module, (1, folder.num_input_channels, *entry.patch_size),
                                    scratch / f"{spec.name}-{folder.name}.onnx")
            ov_model = to_openvino(onnx_path)
            (root / rel).mkdir(parents=True, exist_ok=True)
            models: dict[str, ModelFile] = {}
            for prec in ("fp32", "fp16"):
                if prec == "fp32" or prec in settings.precisions:  # FP32: reference and exact-parity mode
                    xml, binf = save_ir(ov_model, root / rel / f"{prec}.xml", fp16=prec == "fp16")
                    models[prec] = _model_file(prec, rel, xml, binf)
            ov_models[(spec.name, folder.name)] = ov_model
            modules[(spec.name, folder.name)] = module
            entries.append(replace(entry, models=models))
            progress("converted %s/%s (%d fold(s), %d outputs)", spec.name, folder.name, len(nets), folder.num_outputs)
        bundle_variants.append(Variant(spec.name, spec.rank, reorient, pre, tuple(entries), follows))

    # FP32 IR vs torch on real preprocessed patches
    bundle = _bundle(root, settings, labels, bundle_variants, None)
    for variant in bundle.variants:
        for part in variant.parts:
            torch_checks.append(_check_against_torch(bundle, variant, part, modules[(variant.name, part.name)],
                                                     calib_series, settings.torch_check_patches))
            progress("FP32 vs torch %s/%s: max|dlogit|=%.2e argmax agreement=%.6f", variant.name, part.name,
                     torch_checks[-1]["max_abs_logit_diff"], torch_checks[-1]["argmax_agreement"])

    # INT8
    if "int8" in settings.precisions:
        bundle_variants = _quantize_variants(bundle, ov_models, root, calib_series, valid_series, settings.quantize,
                                             progress, quant_times)
        # the FP32 IR stays in every bundle: validation reference, exact-parity mode
        bundle = _bundle(root, settings, labels, bundle_variants, None)

    references: dict[tuple[str, str, str], np.ndarray] = {}  # FP32 label maps, shared with the remedies
    report = _validate(bundle, valid_series, settings, progress, references)
    report["fp32_vs_torch"] = torch_checks
    report["quantization_s"] = quant_times
    report["settings"] = _settings_record(settings)
    report["calibration_series"] = [s.name for s in calib_series]
    report["validation_series"] = [s.name for s in valid_series]
    verdicts: dict[str, dict[str, Any]] = {prec: judge(report["segmentation_vs_fp32"], prec, settings.gate)
                                           for prec in ("int8", "fp16") if prec in settings.precisions}
    base_done = time.monotonic()
    export_started = started if started is not None else progress.started
    report["time_budget"] = {"time_budget_s": settings.time_budget_s, "remedy_time_s": settings.remedy_time_s,
                             "base_export_s": round(base_done - export_started, 1)}
    if verdicts.get("int8", {}).get("verdict") == "failed" and settings.remedies:
        deadline = remedy_deadline(export_started, base_done, settings.time_budget_s, settings.remedy_time_s)
        progress("INT8 failed the fidelity gate: remedies %s within %s (%.0f s left)", list(settings.remedies),
                 deadline.what, max(deadline.left(), 0.0))
        bundle_variants, verdicts = _remedies(root, settings, labels, bundle_variants, verdicts, ov_models,
                                              calib_series, valid_series, report, progress, quant_times, deadline,
                                              references)
        report["time_budget"]["remedy_deadline"] = deadline.what
    references.clear()
    shutil.rmtree(scratch, ignore_errors=True)
    for prec, verdict in verdicts.items():
        log_fn = log.warning if verdict["verdict"] == "failed" else log.info
        log_fn("fidelity gate %s vs FP32: %s (lowest structure Dice %s %s, lowest mean %s; gate %s%s)%s", prec,
               verdict["verdict"].upper(), verdict.get("min_dice"), verdict.get("worst"), verdict.get("mean_dice"),
               verdict["gate"], f"; remedy {verdict['remedy']}" if verdict.get("remedy") else "",
               "; the runtime's precision auto will not use it" if verdict["verdict"] == "failed" else "")
    report["precision_verdicts"] = verdicts
    report["versions"] = _versions()
    report["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                         "processor": platform.processor() or platform.machine()}
    _write_json(root / "validation.json", report)
    bundle = _bundle(root, settings, labels, bundle_variants, "validation.json", verdicts)
    _write_json(root / BUNDLE_FILE, bundle_to_dict(bundle))
    progress("bundle complete")
    return bundle


def _quantize_variants(bundle: Bundle, ov_models: dict[tuple[str, str], Any], root: Path, calib_series: list[Any],
                       valid_series: list[Any], qs: QuantizeSettings, progress: Progress,
                       quant_times: dict[str, float], in_float: dict[tuple[str, str], tuple[str, ...]] | None = None,
                       deadline: Deadline = NO_DEADLINE) -> list[Variant]:
    """Quantize every part of ``bundle`` with ``qs`` (``in_float``: (variant, part) -> names of operations kept
    in floating point, NNCF's ignored scope; each name must be an operation of the part's model) and write its
    ``int8.xml``; the variants with their INT8 model files. ``deadline`` stops it (:class:`BudgetSpent`)."""
    from edgeseg.export.calibration import calibration_patches
    from edgeseg.export.convert import save_ir
    from edgeseg.export.quantize import quantize
    from edgeseg.runtime.infer.engine import core

    quantized: list[Variant] = []
    for variant in bundle.variants:
        entries = []
        for part in variant.parts:
            deadline.check(f"the quantization of {variant.name}/{part.name}")
            t0 = time.perf_counter()
            model = ov_models[(variant.name, part.name)]
            part_qs = qs
            if in_float is not None:
                keep = in_float.get((variant.name, part.name), ())
                names = {op.get_friendly_name() for op in model.get_ops()}
                unknown = [n for n in keep if n not in names]
                if unknown:
                    raise ExportError(f"{variant.name}/{part.name}: the operations {unknown[:3]} to keep in float are "
                                      "not in the model (internal error: the names come from its own INT8 twin).")
                part_qs = replace(qs, ignored=tuple(keep))
            calib = calibration_patches(calib_series, variant, part, part_qs.subset_size)
            fp32_compiled = None
            valid = None
            if part_qs.accuracy_control:
                fp32_compiled = core().compile_model(str(bundle.model_path(part, "fp32")), "CPU",
                                                     {"INFERENCE_PRECISION_HINT": "f32"})
                valid = calibration_patches(valid_series, variant, part, max(4, part_qs.subset_size // 2), seed=1)
            int8 = quantize(model, calib, part_qs, valid, fp32_compiled, deadline=deadline)
            rel = part.source["dir"]
            xml, binf = save_ir(int8, root / rel / "int8.xml")
            entries.append(replace(part, models={**part.models, "int8": _model_file("int8", rel, xml, binf)}))
            quant_times[f"{variant.name}/{part.name}"] = round(time.perf_counter() - t0, 1)
            progress("quantized %s/%s on %d patches in %.0fs%s", variant.name, part.name, len(calib),
                     quant_times[f"{variant.name}/{part.name}"],
                     f" ({len(part_qs.ignored)} operation(s) kept in float)" if part_qs.ignored else "")
        quantized.append(replace(variant, parts=tuple(entries)))
    return quantized


#: the fidelity gate's remedies for a failed INT8, in the order the issue gives them (``--remedies``)
REMEDIES = ("accuracy_control", "float_layers", "bf16")
#: calibration patches per part the sensitivity pass runs on
SENSITIVITY_PATCHES = 4


def _sensitivity(bundle: Bundle, ov_models: dict[tuple[str, str], Any], original: dict[str, bytes],
                 calib_series: list[Any], deadline: Deadline, progress: Progress) -> dict[tuple[str, str], list[Any]]:
    """Each part's quantized operations ranked by the error they add (:mod:`edgeseg.export.sensitivity`), from the
    FP32 model and the INT8 model as first quantized (``original``: its files' bytes by bundle path)."""
    import openvino as ov

    from edgeseg.export.calibration import calibration_patches
    from edgeseg.export.sensitivity import rank_layers
    from edgeseg.runtime.infer.engine import core

    ranking = {}
    for variant in bundle.variants:
        for part in variant.parts:
            files = part.models["int8"]
            int8 = core().read_model(original[files.xml].decode("utf-8"),
                                     ov.Tensor(np.frombuffer(original[files.bin], dtype=np.uint8).copy()))
            patches = calibration_patches(calib_series, variant, part, SENSITIVITY_PATCHES, seed=3)
            ranking[(variant.name, part.name)] = rank_layers(ov_models[(variant.name, part.name)], int8, patches,
                                                             deadline=deadline)
            progress("sensitivity %s/%s: %d quantized operations ranked", variant.name, part.name,
                     len(ranking[(variant.name, part.name)]))
    return ranking


def _float_layer_steps(ranking: dict[tuple[str, str], list[Any]]) -> Iterator[tuple[int, dict[tuple[str, str],
                                                                                             tuple[str, ...]]]]:
    """k = 1, 2, 4 ... : the k most sensitive operations of each part kept in float, while some part has more to
    give (at most half of a part's quantized operations: beyond that INT8 buys little)."""
    k = 1
    most = max((len(r) for r in ranking.values()), default=0)
    while k <= max(1, most // 2):
        yield k, {key: tuple(s.name for s in scores[:k]) for key, scores in ranking.items()}
        k *= 2


def _remedies(root: Path, settings: ExportSettings, labels: dict[int, str], variants: list[Variant],
              verdicts: dict[str, dict[str, Any]], ov_models: dict[tuple[str, str], Any], calib_series: list[Any],
              valid_series: list[Any], report: dict[str, Any], progress: Progress,
              quant_times: dict[str, float], deadline: Deadline,
              references: dict[tuple[str, str, str], np.ndarray] | None = None,
              ) -> tuple[list[Variant], dict[str, dict[str, Any]]]:
    """INT8 failed the gate: try ``settings.remedies`` in order until ``deadline`` (:mod:`edgeseg.export.budget`)
    and record each.

    * ``accuracy_control``: NNCF's accuracy-controlled quantization (layers reverted to float by their measured
      effect on Dice against FP32 on validation patches; at most ``settings.remedy_iterations`` reverts);
    * ``float_layers``: a per-layer sensitivity pass (:mod:`edgeseg.export.sensitivity`) ranks each part's
      quantized operations by the error they add; the k most sensitive are kept in floating point (NNCF's ignored
      scope), k = 1, 2, 4 ..., each re-quantized and re-validated against the gate;
    * ``bf16``: no INT8 at all -- the FP32 model with BF16 inference where this CPU has it, validated like the
      others (its verdict is bf16's; INT8 stays failed).

    Before a step starts, what it will cost is estimated from the base INT8 (its quantization and validation
    seconds); a step that cannot fit in what is left is not started ("not tried", with the figures). A step the
    deadline overtakes is stopped ("stopped"). An INT8 remedy that passes replaces the INT8 model and its verdict
    records the remedy; when none passes, the original INT8 model stays (marked failed, with every remedy's
    figures in ``remedies_tried``)."""
    started = time.monotonic()
    tried: list[dict[str, Any]] = []
    original = {rel: (root / rel).read_bytes() for v in variants for part in v.parts if "int8" in part.models
                for rel in (part.models["int8"].xml, part.models["int8"].bin)}
    base_rows = [r for r in report["segmentation_vs_fp32"] if r["precision"] == "int8"]
    validate_s = sum(float(r.get("seconds", 0.0)) for r in base_rows)
    quantize_s = sum(quant_times.values())
    costs = {"quantize_s": round(quantize_s, 1), "validate_s": round(validate_s, 1)}
    passed = False

    def fits(name: str, needed: float) -> bool:
        left = deadline.left()
        if left >= needed:
            return True
        tried.append({"remedy": name, "verdict": "not tried",
                      "reason": f"needs about {needed:.0f} s (as the base INT8: {costs}), {max(left, 0):.0f} s of "
                                f"{deadline.what} left"})
        progress("remedy %s not tried: %s", name, tried[-1]["reason"])
        return False

    def stopped(name: str, t0: float, err: BudgetSpent) -> None:
        tried.append({"remedy": name, "verdict": "stopped", "reason": str(err),
                      "seconds": round(time.perf_counter() - t0, 1)})
        progress("remedy %s stopped: %s", name, err)

    def int8_step(name: str, qs: QuantizeSettings, in_float: dict[tuple[str, str], tuple[str, ...]] | None,
                  record: dict[str, Any] | None = None) -> bool:
        nonlocal variants, passed
        t0 = time.perf_counter()
        step_times: dict[str, float] = {}  # the base INT8's stay in the report's quantization_s
        try:
            candidate = _quantize_variants(_bundle(root, settings, labels, variants, None), ov_models, root,
                                           calib_series, valid_series, qs, progress, step_times, in_float,
                                           deadline)
            bundle = _bundle(root, settings, labels, candidate, None)
            rows = _compare(bundle, valid_series, settings, ["int8"], progress, deadline, references)
        except BudgetSpent as err:
            stopped(name, t0, err)
            return False
        except ExportError as err:
            tried.append({"remedy": name, "verdict": "error", "reason": str(err)})
            return True
        verdict = judge(rows, "int8", settings.gate, remedy=name)
        tried.append({"remedy": name, "verdict": verdict["verdict"], "min_dice": verdict.get("min_dice"),
                      "mean_dice": verdict.get("mean_dice"), "worst": verdict.get("worst"),
                      "seconds": round(time.perf_counter() - t0, 1), "quantization_s": step_times,
                      "per_structure_min_dice": verdict.get("per_structure_min_dice"), **(record or {})})
        progress("remedy %s: INT8 %s (lowest structure Dice %s, lowest mean %s)", name,
                 verdict["verdict"].upper(), verdict.get("min_dice"), verdict.get("mean_dice"))
        if verdict["verdict"] == "passed":
            passed = True
            variants = candidate
            report["segmentation_vs_fp32_before_remedy"] = base_rows
            report["segmentation_vs_fp32"] = [
                r for r in report["segmentation_vs_fp32"] if r["precision"] != "int8"] + rows
            verdicts["int8"] = {**verdict, **(record or {}), "failed_as_quantized": {
                k: verdicts["int8"].get(k) for k in ("min_dice", "mean_dice", "worst")}}
        return True

    out_of_time = False
    for remedy in settings.remedies:
        if passed:
            break
        if out_of_time or deadline.left() <= 0:
            out_of_time = True
            tried.append({"remedy": remedy, "verdict": "not tried", "reason": f"{deadline.what} was spent"})
            continue
        if remedy == "bf16":
            if not fits(remedy, validate_s):
                continue
            t0 = time.perf_counter()
            try:
                bundle = _bundle(root, settings, labels, variants, None, {"int8": verdicts["int8"]})
                rows = _compare(bundle, valid_series, settings, ["bf16"], progress, deadline, references)
            except BudgetSpent as err:
                stopped(remedy, t0, err)
                out_of_time = True
                continue
            if not rows:
                tried.append({"remedy": remedy, "verdict": "not tried", "reason": "this CPU has no BF16"})
                continue
            verdicts["bf16"] = judge(rows, "bf16", settings.gate, remedy="bf16")
            report["segmentation_vs_fp32"].extend(rows)
            tried.append({"remedy": remedy, "verdict": verdicts["bf16"]["verdict"],
                          "min_dice": verdicts["bf16"]["min_dice"], "mean_dice": verdicts["bf16"]["mean_dice"],
                          "worst": verdicts["bf16"].get("worst"), "seconds": round(time.perf_counter() - t0, 1),
                          "per_structure_min_dice": verdicts["bf16"].get("per_structure_min_dice")})
            continue
        if remedy == "accuracy_control":
            qs = replace(settings.quantize, accuracy_control=True, max_iterations=settings.remedy_iterations,
                         max_dice_drop=min(settings.quantize.max_dice_drop, 1.0 - settings.gate.mean_dice))
            if fits(remedy, quantize_s + validate_s) and not int8_step(remedy, qs, None):
                out_of_time = True
            continue
        # float_layers: rank, then keep the top k in float
        t0 = time.perf_counter()
        try:
            ranking = _sensitivity(_bundle(root, settings, labels, variants, None), ov_models, original,
                                   calib_series, deadline, progress)
        except BudgetSpent as err:
            stopped(f"{remedy} (sensitivity pass)", t0, err)
            out_of_time = True
            continue
        sensitivity_s = round(time.perf_counter() - t0, 1)
        report["sensitivity"] = {"seconds": sensitivity_s, "patches_per_part": SENSITIVITY_PATCHES,
                                 "ranking": {f"{v}/{p}": [s.to_dict() for s in scores]
                                             for (v, p), scores in ranking.items()}}
        for k, in_float in _float_layer_steps(ranking):
            name = f"{remedy} ({k} most sensitive operation(s) of each part in float)"
            record = {"kept_in_float": {f"{v}/{p}": [s.to_dict() for s in ranking[(v, p)][:k]]
                                        for (v, p) in ranking},
                      "sensitivity_s": sensitivity_s}
            if passed or not fits(name, quantize_s + validate_s):
                break
            if not int8_step(name, settings.quantize, in_float, record):
                out_of_time = True
                break
    if not passed:
        for rel, data in original.items():  # the INT8 model as first quantized, marked failed
            (root / rel).write_bytes(data)
    verdicts["int8"]["remedies_tried"] = tried
    report["remedies_tried"] = tried
    report["remedies_s"] = round(time.monotonic() - started, 1)
    return variants, verdicts


def _settings_record(settings: ExportSettings) -> dict[str, Any]:
    d = asdict(settings)
    d["labels_file"] = str(settings.labels_file) if settings.labels_file else None
    return d


def _check_against_torch(bundle: Bundle, variant: Any, part: Any, module: Any, series: list[Any],
                         limit: int) -> dict[str, Any]:
    import torch

    from edgeseg.export.calibration import calibration_patches
    from edgeseg.runtime.infer.engine import core

    compiled = core().compile_model(str(bundle.model_path(part, "fp32")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    max_diff = 0.0
    agree = 0
    total = 0
    for p in calibration_patches(series, variant, part, limit, seed=2):
        ov_out = np.asarray(compiled({0: p})[0])
        with torch.no_grad():
            ref = module(torch.from_numpy(p)).numpy()
        max_diff = max(max_diff, float(np.abs(ov_out - ref).max()))
        agree += int((ov_out.argmax(1) == ref.argmax(1)).sum())
        total += ov_out[:, 0].size
    return {"variant": variant.name, "part": part.name, "patches": limit, "max_abs_logit_diff": max_diff,
            "argmax_agreement": agree / max(total, 1)}


def _compare(bundle: Bundle, series: list[Any], settings: ExportSettings, precisions: Sequence[str],
             progress: Progress, deadline: Deadline = NO_DEADLINE,
             references: dict[tuple[str, str, str], np.ndarray] | None = None) -> list[dict[str, Any]]:
    """One row per variant, validation series, contrast and precision: Dice and volume difference of each
    structure against FP32, through the full runtime, and the seconds it took. "bf16" is the FP32 model with BF16
    inference (the engine's choice for ``auto`` when INT8 is marked failed); no rows for it where this CPU has no
    BF16. ``references``: FP32 label maps by (variant, series, contrast), filled and reused (the FP32 model does
    not change during an export). ``deadline`` is checked at every tile (:class:`BudgetSpent`)."""
    from edgeseg.export.calibration import contrast_variant
    from edgeseg.runtime.options import SegmentOptions
    from edgeseg.runtime.segmenter import Segmenter

    # the runtime's segmenter reads the bundle's digest from its bundle.json: the bundle as it is now (rewritten
    # with the final one at the end)
    _write_json(bundle.path / BUNDLE_FILE, bundle_to_dict(bundle))
    results: list[dict[str, Any]] = []

    def tick(stage: str, fraction: float) -> None:
        deadline.check("validation")

    for variant in bundle.variants:
        # one segmenter per precision, set up once for every series and contrast of the variant
        segmenters = {"fp32": Segmenter(bundle, SegmentOptions(precision="fp32", variant=variant.name))}
        # the precisions under validation are what export is checking: the engines get them without the runtime's
        # warning about a precision with no verdict (bundle.json is left as it is)
        checking = replace(bundle, precision_verdicts={
            **bundle.precision_verdicts, **{p: {"verdict": "passed"} for p in precisions if p != "bf16"}})
        for prec in precisions:
            if prec == "bf16":
                # auto with INT8/FP16 out and BF16 allowed: the engine's own choice of fp32+bf16 where it runs
                only_bf16 = {"int8": {"verdict": "failed"}, "fp16": {"verdict": "failed"},
                             "bf16": {"verdict": "passed"}}
                seg = Segmenter(replace(bundle, precision_verdicts=only_bf16),
                                SegmentOptions(precision="auto", variant=variant.name))
                if not all(seg.engine(part).precision == "fp32+bf16" for part in variant.parts):
                    return []
                segmenters[prec] = seg
            else:
                segmenters[prec] = Segmenter(checking, SegmentOptions(precision=prec, variant=variant.name))
        for s in series:
            for contrast in settings.validation_contrasts:
                vol = contrast_variant(s.volume, contrast)
                key = (variant.name, s.name, contrast)
                ref = references.get(key) if references is not None else None
                if ref is None:
                    ref, _ = segmenters["fp32"].segment_volume(vol, progress=tick)
                    if references is not None:
                        references[key] = ref
                for prec in precisions:
                    t0 = time.perf_counter()
                    pred, rec = segmenters[prec].segment_volume(vol, progress=tick)
                    seconds = time.perf_counter() - t0
                    per_class = {bundle.labels[v]: d for v, d in dice_per_class(pred, ref, bundle.labels).items()}
                    volume_diff = {}
                    for v, name in bundle.labels.items():
                        n_ref, n_pred = int((ref == v).sum()), int((pred == v).sum())
                        volume_diff[name] = round(100.0 * (n_pred - n_ref) / n_ref, 3) if n_ref else None
                    present = [d for d in per_class.values() if d is not None]
                    results.append({
                        "variant": variant.name, "series": s.name, "contrast": contrast, "precision": prec,
                        "precision_used": [p["precision"] for p in rec["parts"]],
                        "mean_dice_vs_fp32": float(np.mean(present)) if present else None,
                        "min_dice_vs_fp32": float(np.min(present)) if present else None,
                        "voxel_agreement": float((ref == pred).mean()),
                        "classes_compared": len(present),
                        "per_class_dice_vs_fp32": per_class,
                        "per_class_volume_diff_pct": volume_diff,
                        "seconds": round(seconds, 2),
                    })
                    progress("validation %s %s %s %s: mean Dice vs FP32 %.4f (%d classes), voxel agreement %.5f",
                             variant.name, s.name, contrast, prec, results[-1]["mean_dice_vs_fp32"] or float("nan"),
                             len(present), results[-1]["voxel_agreement"])
        del segmenters  # their compiled engines are released before the next variant's
    return results


def _validate(bundle: Bundle, series: list[Any], settings: ExportSettings, progress: Progress,
              references: dict[tuple[str, str, str], np.ndarray] | None = None) -> dict[str, Any]:
    """Dice of INT8 (and FP16) vs FP32 through the full runtime on each validation series and contrast; latency
    per tile for each precision."""
    from edgeseg.runtime.infer.engine import measure_tile_latency

    precisions: list[str] = [p for p in ("int8", "fp16") if p in settings.precisions]
    results = _compare(bundle, series, settings, precisions, progress, references=references)
    latency: list[dict[str, Any]] = []
    # what is being checked compiles without the runtime's warning about a precision with no verdict
    checking = replace(bundle, precision_verdicts={
        **bundle.precision_verdicts, **{p: {"verdict": "passed"} for p in precisions}})
    for variant in bundle.variants:
        for part in variant.parts:
            for prec in ("fp32", *precisions):
                if prec not in part.models:
                    continue
                try:
                    sec = measure_tile_latency(checking, part, prec, "CPU", repeats=settings.latency_repeats)
                except EdgesegError as err:
                    latency.append({"variant": variant.name, "part": part.name, "precision": prec, "error": str(err)})
                    continue
                latency.append({"variant": variant.name, "part": part.name, "precision": prec,
                                "seconds_per_tile": round(sec, 4), "patch_size": list(part.patch_size)})
                progress("latency %s/%s %s: %.3f s/tile", variant.name, part.name, prec, sec)
    summary = {}
    for prec in precisions:
        vals = [r["mean_dice_vs_fp32"] for r in results
                if r["precision"] == prec and r["mean_dice_vs_fp32"] is not None]
        summary[prec] = {"mean_dice_vs_fp32": float(np.mean(vals)) if vals else None,
                         "worst_series_mean_dice": float(np.min(vals)) if vals else None}
    return {"dice_note": "Dice per class over classes present in FP32 or the compared precision; classes absent "
                         "from both are left out of means.",
            "summary": summary, "segmentation_vs_fp32": results, "latency_per_tile": latency}


__all__ = ["VariantSpec", "ExportSettings", "export_bundle", "mean_dice"]
