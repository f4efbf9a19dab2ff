"""``bundle.json``: the typed, versioned description of a model bundle, and its validating loader.

Layout of a bundle folder::

    bundle.json                  # this schema
    <variant>/<part>/<precision>.xml|.bin   # OpenVINO IR, one per part and precision (folds averaged inside)
    validation.json              # the export's validation report (Dice, latency, settings, versions)

Geometry conventions recorded here are nnU-Net's: ``spacing`` and ``patch_size`` are in the network's axis
order, i.e. the SimpleITK order (z, y, x) of the (reoriented) image permuted by ``transpose_forward``.
Pre-resampling spacing (TotalSegmentator's wrapper) is in world (x, y, z) millimetres of the RAS image.

The dataclasses below are the contract: export builds them and writes them with :func:`bundle_to_dict`; the
loader :func:`parse_bundle` is its inverse and raises :class:`~edgeseg.errors.BundleError` naming the bad key path
(``variants[0].parts[1].patch_size``). Keys added later have defaults, so older bundles load unchanged.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.errors import BundleError

SCHEMA_VERSION = 1
BUNDLE_FILE = "bundle.json"
PRECISIONS = ("fp32", "fp16", "int8")
#: what export's fidelity gate found for a reduced precision (``precision_verdicts``): "passed" (as quantized, or
#: after the remedy named in ``remedy``), "failed" (no remedy brought it through the gate: the runtime's ``auto``
#: never chooses it), "unchecked" (a bundle written before the gate existed, or exported without validation: ``auto``
#: does not choose it either; an explicit request for it runs with a WARNING)
VERDICTS = ("passed", "failed", "unchecked")
#: ``scipy.ndimage.zoom`` boundary modes a pre-resampling may name
ZOOM_MODES = ("constant", "nearest", "reflect", "mirror", "wrap", "grid-constant", "grid-mirror", "grid-wrap")
NORMALIZATION_SCHEMES = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization")


@dataclass(frozen=True)
class Normalization:
    """nnU-Net's per-channel intensity normalization (scheme name as in plans.json)."""

    scheme: str
    use_mask_for_norm: bool = False
    intensity_properties: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Resampling:
    """nnU-Net's default resampling settings (``resample_data_or_seg_to_shape`` kwargs)."""

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None
    anisotropy_threshold: float = 3.0


@dataclass(frozen=True)
class PreResample:
    """TotalSegmentator's wrapper around nnU-Net: resample the RAS image to ``spacing`` (x, y, z mm) first, and
    the merged label map back to the exact input shape at the end.

    Every setting of that wrapper is recorded here (the runtime uses no constants of its own):

    * ``order``: spline order of ``scipy.ndimage.zoom`` on the way in (TotalSegmentator's ``--resampling_order``:
      1 since release 2.16, 3 before);
    * ``mode``: the zoom's boundary mode on the way in and back ("nearest" in TotalSegmentator's
      ``resample_img``);
    * ``cast``: the dtype the resampled image is truncated to (TotalSegmentator casts to int32), or None;
    * ``order_back``: spline order of the label map back to the input shape (0: nearest label; TotalSegmentator's
      default ``change_spacing(..., order=0, force_affine=...)``);
    * ``header_float32``: the zoom factors and the resampled spacing go through float32, as they do when
      TotalSegmentator reads the voxel size from a NIfTI header and nnU-Net reads the resampled file back.

    Defaults are what bundles written before these keys existed meant (order 3, mode "constant", float64).
    """

    spacing: tuple[float, float, float]
    order: int = 3
    cast: str | None = "int32"
    mode: str = "constant"
    order_back: int = 0
    header_float32: bool = False


@dataclass(frozen=True)
class ModelFile:
    """One OpenVINO IR (xml + bin), paths relative to the bundle folder."""

    precision: str
    xml: str
    bin: str


@dataclass(frozen=True)
class Part:
    """One nnU-Net model (one dataset/trainer/plans/configuration) with its own label numbering."""

    name: str
    #: the part's own label value -> the bundle's merged label value
    label_map: dict[int, int]
    num_input_channels: int
    #: segmentation heads of the network, background included
    num_outputs: int
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    normalization: tuple[Normalization, ...]
    resampling_data: Resampling
    resampling_probabilities: Resampling
    tile_step_size: float
    use_gaussian: bool
    use_mirroring: bool
    mirror_axes: tuple[int, ...]
    folds: tuple[str, ...]
    models: dict[str, ModelFile]
    source: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """One way to segment (e.g. total_mr 1.5 mm two parts, or 3 mm fast). ``rank`` 0 is the most accurate."""

    name: str
    rank: int
    #: "RAS": reorient to the closest canonical (RAS) orientation first, as TotalSegmentator does; "none": use
    #: the array as stored (plain nnU-Net with SimpleITK I/O)
    reorient: str
    pre_resample: PreResample | None
    parts: tuple[Part, ...]
    #: whose wrapping of nnU-Net this variant reproduces, e.g. "TotalSegmentator 2.18.0 (total_mr, --fast)";
    #: empty for plain nnU-Net
    follows: str = ""


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated bundle. ``path`` is the folder it was read from."""

    path: Path
    schema_version: int
    name: str
    description: str
    intended_use: str
    labels: dict[int, str]
    variants: tuple[Variant, ...]
    files: dict[str, str]
    validation_report: str | None = None
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    #: the bundle's own version (export's --bundle-version), named with the bundle in every result's description
    version: str = ""
    #: True for a bundle that must not be used clinically (the demo): its results say so in their descriptions
    not_for_clinical_use: bool = False
    #: precision ("int8", "fp16", "bf16") -> export's fidelity verdict against FP32: {"verdict": one of
    #: :data:`VERDICTS`, "remedy": what made it pass or None, "gate": the thresholds, "min_dice", "mean_dice",
    #: "worst": the structure/series/contrast of the lowest Dice}. FP32 is the reference and has none.
    precision_verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def verdict(self, precision: str) -> str:
        """Export's verdict on ``precision`` ("passed", "failed", "unchecked"); FP32 always "passed"."""
        if precision == "fp32":
            return "passed"
        return str((self.precision_verdicts.get(precision) or {}).get("verdict") or "unchecked")

    def describe_precisions(self) -> str:
        """One line for ``doctor``/``status``: each precision the bundle holds and export's verdict on it, e.g.
        "fp32 (reference), int8 FAILED the fidelity gate (lowest structure Dice 0.31 adrenal_gland_left, lowest
        mean 0.82): auto uses fp32"."""
        held = sorted({p for v in self.variants for part in v.parts for p in part.models},
                      key=lambda p: PRECISIONS.index(p) if p in PRECISIONS else 9)
        out = []
        for prec in [*held, *(p for p in self.precision_verdicts if p not in held)]:
            if prec == "fp32":
                out.append("fp32 (reference)")
                continue
            record = self.precision_verdicts.get(prec) or {}
            verdict = self.verdict(prec)
            text = f"{prec} {verdict.upper() if verdict == 'failed' else verdict}"
            if "min_dice" in record:
                worst = (record.get("worst") or {}).get("structure")
                text += (f" (lowest structure Dice {record['min_dice']}{' ' + str(worst) if worst else ''}, lowest "
                         f"mean {record.get('mean_dice')}" + (f", after {record['remedy']}" if record.get("remedy")
                                                               else "") + ")")
            if verdict == "failed":
                text += ": precision auto never uses it"
            elif verdict == "unchecked" and prec in held:
                text += (" (no fidelity verdict: bundle written before export's fidelity gate; re-export it): precision"
                         " auto does not use it" if not self.precision_verdicts else ": precision auto does not use it")
            out.append(text)
        return ", ".join(out)

    def variant(self, name: str | None = None) -> Variant:
        """The named variant, or the most accurate one when ``name`` is None."""
        if name is None:
            return min(self.variants, key=lambda v: v.rank)
        for v in self.variants:
            if v.name == name:
                return v
        raise BundleError(
            f"Bundle {self.path} has no variant '{name}'; it has: {', '.join(v.name for v in self.variants)}."
        )

    def model_path(self, part: Part, precision: str) -> Path:
        """Absolute path of a part's IR xml for ``precision``."""
        if precision not in part.models:
            raise BundleError(
                f"Bundle {self.path} has no {precision} model for part '{part.name}' "
                f"(it has {', '.join(sorted(part.models))}); choose one of those precisions."
            )
        return self.path / part.models[precision].xml


# --------------------------------------------------------------------------------------------------------------
# loading


class _Reader:
    """Reads typed values out of a JSON mapping, naming the key path in every error."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> BundleError:
        return BundleError(
            f"{self.source}: key '{key}' {problem}. Re-export the bundle with `edgeseg export` or fix bundle.json."
        )

    def get(self, obj: dict[str, Any], key: str, path: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        full = f"{path}.{key}" if path else key
        if key not in obj:
            if default is ...:
                raise self.fail(full, "is missing")
            return default
        value = obj[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind in (int, float):
            raise self.fail(full, f"must be a {kind.__name__}, got a boolean")
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(full, f"must be {names}, got {type(value).__name__}")
        return value

    def seq(self, obj: dict[str, Any], key: str, path: str, item: type, length: int | None = None) -> tuple[Any, ...]:
        values = self.get(obj, key, path, list)
        full = f"{path}.{key}" if path else key
        if length is not None and len(values) != length:
            raise self.fail(full, f"must have {length} entries, has {len(values)}")
        out = []
        for i, v in enumerate(values):
            if item is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, item) or isinstance(v, bool):
                raise self.fail(f"{full}[{i}]", f"must be {item.__name__}")
            out.append(v)
        return tuple(out)

    def no_extra(self, obj: dict[str, Any], path: str, allowed: set[str]) -> None:
        extra = sorted(set(obj) - allowed)
        if extra:
            raise self.fail(f"{path}.{extra[0]}" if path else extra[0], "is not a known key (typo?)")


def _resampling(r: _Reader, obj: dict[str, Any], path: str) -> Resampling:
    r.no_extra(obj, path, {"order", "order_z", "force_separate_z", "anisotropy_threshold"})
    fsz = obj.get("force_separate_z")
    if fsz is not None and not isinstance(fsz, bool):
        raise r.fail(f"{path}.force_separate_z", "must be true, false or null")
    return Resampling(
        order=r.get(obj, "order", path, int),
        order_z=r.get(obj, "order_z", path, int, 0),
        force_separate_z=fsz,
        anisotropy_threshold=r.get(obj, "anisotropy_threshold", path, float, 3.0),
    )


def _part(r: _Reader, obj: dict[str, Any], path: str) -> Part:
    allowed = {
        "name", "label_map", "num_input_channels", "num_outputs", "spacing", "patch_size", "transpose_forward",
        "transpose_backward", "normalization", "resampling_data", "resampling_probabilities", "tile_step_size",
        "use_gaussian", "use_mirroring", "mirror_axes", "folds", "models", "source",
    }
    r.no_extra(obj, path, allowed)
    patch = r.seq(obj, "patch_size", path, int)
    ndim = len(patch)
    if ndim != 3:
        raise r.fail(f"{path}.patch_size", "must have 3 entries (only 3-D configurations are supported)")
    spacing = r.seq(obj, "spacing", path, float, ndim)
    tf = r.seq(obj, "transpose_forward", path, int, ndim)
    tb = r.seq(obj, "transpose_backward", path, int, ndim)
    if sorted(tf) != list(range(ndim)) or [tf[i] for i in tb] != list(range(ndim)):
        raise r.fail(f"{path}.transpose_backward", "must be the inverse permutation of transpose_forward")
    n_in = r.get(obj, "num_input_channels", path, int)
    norms = []
    for i, n in enumerate(r.get(obj, "normalization", path, list)):
        npath = f"{path}.normalization[{i}]"
        if not isinstance(n, dict):
            raise r.fail(npath, "must be an object")
        r.no_extra(n, npath, {"scheme", "use_mask_for_norm", "intensity_properties"})
        scheme = r.get(n, "scheme", npath, str)
        if scheme not in NORMALIZATION_SCHEMES:
            raise r.fail(f"{npath}.scheme", f"is '{scheme}', not one of {', '.join(NORMALIZATION_SCHEMES)}")
        props = r.get(n, "intensity_properties", npath, dict, {})
        norms.append(Normalization(scheme, r.get(n, "use_mask_for_norm", npath, bool, False),
                                   {str(k): float(v) for k, v in props.items()}))
    if len(norms) != n_in:
        raise r.fail(f"{path}.normalization", f"must have one entry per input channel ({n_in})")
    n_out = r.get(obj, "num_outputs", path, int)
    raw_map = r.get(obj, "label_map", path, dict)
    label_map: dict[int, int] = {}
    for k, v in raw_map.items():
        try:
            src = int(k)
        except ValueError:
            raise r.fail(f"{path}.label_map.{k}", "must be an integer label value") from None
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise r.fail(f"{path}.label_map.{k}", "must map to a positive integer merged label")
        if not 1 <= src < n_out:
            raise r.fail(f"{path}.label_map.{k}", f"is outside the network's 1..{n_out - 1} foreground outputs")
        label_map[src] = v
    models: dict[str, ModelFile] = {}
    for prec, m in r.get(obj, "models", path, dict).items():
        mpath = f"{path}.models.{prec}"
        if prec not in PRECISIONS:
            raise r.fail(mpath, f"is not a known precision ({', '.join(PRECISIONS)})")
        if not isinstance(m, dict):
            raise r.fail(mpath, "must be an object")
        r.no_extra(m, mpath, {"xml", "bin"})
        models[prec] = ModelFile(prec, r.get(m, "xml", mpath, str), r.get(m, "bin", mpath, str))
    if not models:
        raise r.fail(f"{path}.models", "must name at least one precision")
    step = r.get(obj, "tile_step_size", path, float)
    if not 0 < step <= 1:
        raise r.fail(f"{path}.tile_step_size", "must be in (0, 1]")
    return Part(
        name=r.get(obj, "name", path, str),
        label_map=label_map,
        num_input_channels=n_in,
        num_outputs=n_out,
        spacing=spacing,
        patch_size=patch,
        transpose_forward=tf,
        transpose_backward=tb,
        normalization=tuple(norms),
        resampling_data=_resampling(r, r.get(obj, "resampling_data", path, dict), f"{path}.resampling_data"),
        resampling_probabilities=_resampling(
            r, r.get(obj, "resampling_probabilities", path, dict), f"{path}.resampling_probabilities"),
        tile_step_size=step,
        use_gaussian=r.get(obj, "use_gaussian", path, bool),
        use_mirroring=r.get(obj, "use_mirroring", path, bool),
        mirror_axes=r.seq(obj, "mirror_axes", path, int),
        folds=tuple(str(f) for f in r.get(obj, "folds", path, list)),
        models=models,
        source=r.get(obj, "source", path, dict, {}),
    )


def _variant(r: _Reader, obj: dict[str, Any], path: str, labels: dict[int, str]) -> Variant:
    r.no_extra(obj, path, {"name", "rank", "reorient", "pre_resample", "parts", "follows"})
    reorient = r.get(obj, "reorient", path, str)
    if reorient not in ("RAS", "none"):
        raise r.fail(f"{path}.reorient", "must be 'RAS' or 'none'")
    pre = obj.get("pre_resample")
    pre_resample = None
    if pre is not None:
        ppath = f"{path}.pre_resample"
        if not isinstance(pre, dict):
            raise r.fail(ppath, "must be an object or null")
        r.no_extra(pre, ppath, {"spacing", "order", "cast", "mode", "order_back", "header_float32"})
        cast = pre.get("cast", "int32")
        if cast not in (None, "int32"):
            raise r.fail(f"{ppath}.cast", "must be 'int32' or null")
        order, order_back = r.get(pre, "order", ppath, int, 3), r.get(pre, "order_back", ppath, int, 0)
        for key, value in (("order", order), ("order_back", order_back)):
            if not 0 <= value <= 5:
                raise r.fail(f"{ppath}.{key}", "must be a spline order from 0 to 5")
        mode = r.get(pre, "mode", ppath, str, "constant")
        if mode not in ZOOM_MODES:
            raise r.fail(f"{ppath}.mode", f"must be one of {', '.join(ZOOM_MODES)}")
        pre_resample = PreResample(r.seq(pre, "spacing", ppath, float, 3), order, cast, mode, order_back,
                                   r.get(pre, "header_float32", ppath, bool, False))
    parts_raw = r.get(obj, "parts", path, list)
    if not parts_raw:
        raise r.fail(f"{path}.parts", "must list at least one model part")
    parts = []
    for i, p in enumerate(parts_raw):
        if not isinstance(p, dict):
            raise r.fail(f"{path}.parts[{i}]", "must be an object")
        part = _part(r, p, f"{path}.parts[{i}]")
        unknown = sorted(set(part.label_map.values()) - set(labels))
        if unknown:
            raise r.fail(f"{path}.parts[{i}].label_map", f"maps to labels {unknown} that are not in 'labels'")
        parts.append(part)
    return Variant(r.get(obj, "name", path, str), r.get(obj, "rank", path, int), reorient, pre_resample, tuple(parts),
                   r.get(obj, "follows", path, str, ""))


def parse_bundle(data: dict[str, Any], path: Path, source: Path | None = None) -> Bundle:
    """Validate a ``bundle.json`` mapping into a :class:`Bundle` (no file checks)."""
    r = _Reader(source or path / BUNDLE_FILE)
    if not isinstance(data, dict):
        raise r.fail("(top level)", "must be a JSON object")
    allowed = {"schema_version", "name", "description", "intended_use", "labels", "variants", "files",
               "validation_report", "created", "versions", "version", "not_for_clinical_use", "precision_verdicts"}
    r.no_extra(data, "", allowed)
    version = r.get(data, "schema_version", "", int)
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{r.source}: schema_version {version} is not supported by this edgeseg (it reads version "
            f"{SCHEMA_VERSION}). Re-export the bundle with this edgeseg version, or upgrade edgeseg."
        )
    labels: dict[int, str] = {}
    for k, v in r.get(data, "labels", "", dict).items():
        try:
            value = int(k)
        except ValueError:
            raise r.fail(f"labels.{k}", "must be an integer label value") from None
        if value < 1 or not isinstance(v, str) or not v:
            raise r.fail(f"labels.{k}", "must map a positive integer to a non-empty name")
        labels[value] = v
    parsed = []
    for i, v in enumerate(r.get(data, "variants", "", list)):
        if not isinstance(v, dict):
            raise r.fail(f"variants[{i}]", "must be an object")
        parsed.append(_variant(r, v, f"variants[{i}]", labels))
    variants = tuple(parsed)
    if not variants:
        raise r.fail("variants", "must list at least one variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise r.fail("variants", "has duplicate variant names")
    files = r.get(data, "files", "", dict)
    for k, v in files.items():
        if not isinstance(v, str) or len(v) != 64:
            raise r.fail(f"files.{k}", "must be a hex sha256")
        if Path(k).is_absolute() or ".." in Path(k).parts:
            raise r.fail(f"files.{k}", "must be a relative path inside the bundle")
    for variant in variants:
        for part in variant.parts:
            for m in part.models.values():
                for rel in (m.xml, m.bin):
                    if rel not in files:
                        raise r.fail("files", f"does not record the hash of model file '{rel}'")
    return Bundle(
        path=path,
        schema_version=version,
        name=r.get(data, "name", "", str),
        description=r.get(data, "description", "", str, ""),
        intended_use=r.get(data, "intended_use", "", str, ""),
        labels=labels,
        variants=variants,
        files=dict(files),
        validation_report=r.get(data, "validation_report", "", (str, type(None)), None),
        created=r.get(data, "created", "", str, ""),
        versions=r.get(data, "versions", "", dict, {}),
        version=r.get(data, "version", "", str, ""),
        not_for_clinical_use=r.get(data, "not_for_clinical_use", "", bool, False),
        precision_verdicts=_verdicts(r, r.get(data, "precision_verdicts", "", dict, {})),
    )


def _verdicts(r: _Reader, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for prec, record in raw.items():
        path = f"precision_verdicts.{prec}"
        if prec not in (*PRECISIONS, "bf16") or prec == "fp32":
            raise r.fail(path, "must name a reduced precision: int8, fp16 or bf16")
        if not isinstance(record, dict):
            raise r.fail(path, "must be an object")
        if record.get("verdict") not in VERDICTS:
            raise r.fail(f"{path}.verdict", f"must be one of {', '.join(VERDICTS)}")
        out[prec] = dict(record)
    return out


def load_bundle(path: Path | str, verify: bool = True) -> Bundle:
    """Load and validate the bundle folder ``path``; with ``verify`` check every file's sha256 too."""
    root = Path(path)
    if root.is_file() and root.name == BUNDLE_FILE:
        root = root.parent
    manifest = root / BUNDLE_FILE
    if not manifest.is_file():
        raise BundleError(
            f"No {BUNDLE_FILE} in {root}: this is not an edgeseg model bundle. Point --bundle at the folder "
            "that `edgeseg export` wrote."
        )
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{manifest} is not readable JSON ({err}); copy the bundle again.") from err
    bundle = parse_bundle(data, root)
    if verify:
        from edgeseg.bundle.hashing import verify_files

        verify_files(root, bundle.files)
    return bundle


def bundle_to_dict(bundle: Bundle) -> dict[str, Any]:
    """The JSON form of a bundle, as export writes it to ``bundle.json``: every field of the dataclasses above
    (``path`` excepted). :func:`parse_bundle` is its inverse: ``parse_bundle(bundle_to_dict(b), b.path) == b``."""
    d = asdict(bundle)
    d.pop("path")
    d["labels"] = {str(k): v for k, v in bundle.labels.items()}
    for v in d["variants"]:
        for p in v["parts"]:
            p["label_map"] = {str(k): val for k, val in p["label_map"].items()}
            for m in p["models"].values():
                m.pop("precision")
    return json.loads(json.dumps(d))  # tuples -> lists, as in the file
