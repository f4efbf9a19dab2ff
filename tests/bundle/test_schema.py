"""bundle.json: typed loading, errors that name the bad key, and the sha256 integrity check."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from edgeseg.bundle import bundle_to_dict, load_bundle
from edgeseg.bundle.schema import (
    SCHEMA_VERSION, Bundle, ModelFile, Normalization, Part, PreResample, Resampling, Variant, parse_bundle,
)
from edgeseg.errors import BundleError
from helpers.synthetic import make_bundle


@pytest.fixture
def bundle_dir(tmp_path):
    return make_bundle(tmp_path / "b", parts=2)


def _edit(bundle_dir, change):
    data = json.loads((bundle_dir / "bundle.json").read_text())
    change(data)
    (bundle_dir / "bundle.json").write_text(json.dumps(data))


def test_loads_and_round_trips(bundle_dir):
    b = load_bundle(bundle_dir)
    assert b.labels == {1: "structure_1", 2: "structure_2"}
    v = b.variant()
    assert [p.name for p in v.parts] == ["part0", "part1"]
    assert v.parts[1].label_map == {1: 2}
    again = parse_bundle(bundle_to_dict(b), bundle_dir)
    assert again == b


@pytest.mark.parametrize("change,key", [
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d["variants"][0]["parts"][1].update(patch_size=[8, 8]), r"variants\[0\]\.parts\[1\]\.patch_size"),
    (lambda d: d["variants"][0]["parts"][0].update(tile_step_size="half"),
     r"variants\[0\]\.parts\[0\]\.tile_step_size"),
    (lambda d: d["variants"][0]["parts"][0].pop("spacing"), r"variants\[0\]\.parts\[0\]\.spacing' is missing"),
    (lambda d: d["variants"][0]["parts"][0]["label_map"].update({"1": 99}), r"label_map' maps to labels \[99\]"),
    (lambda d: d["variants"][0]["parts"][0]["normalization"][0].update(scheme="Magic"), "scheme"),
    (lambda d: d["variants"][0].update(reorient="LPS"), r"variants\[0\]\.reorient"),
    (lambda d: d["variants"][0]["parts"][0].update(transpose_backward=[1, 0, 2]), "transpose_backward"),
    (lambda d: d["files"].pop("v/part0/fp32.bin"), "does not record the hash of model file 'v/part0/fp32.bin'"),
])
def test_errors_name_the_bad_key(bundle_dir, change, key):
    _edit(bundle_dir, change)
    with pytest.raises(BundleError, match=key):
        load_bundle(bundle_dir)


def test_unsupported_schema_version(bundle_dir):
    _edit(bundle_dir, lambda d: d.update(schema_version=99))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        load_bundle(bundle_dir)


def test_modified_or_missing_file_fails_the_hash_check(bundle_dir):
    binf = bundle_dir / "v" / "part0" / "fp32.bin"
    binf.write_bytes(binf.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="fp32.bin: sha256 differs"):
        load_bundle(bundle_dir)
    load_bundle(bundle_dir, verify=False)  # the schema itself is fine
    binf.unlink()
    with pytest.raises(BundleError, match="fp32.bin: missing"):
        load_bundle(bundle_dir)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not an edgeseg model bundle"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{")
    with pytest.raises(BundleError, match="not readable JSON"):
        load_bundle(tmp_path)


def test_unknown_variant_and_precision(bundle_dir):
    b = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="has no variant 'fast'"):
        b.variant("fast")
    with pytest.raises(BundleError, match="has no int8 model"):
        b.model_path(b.variant().parts[0], "int8")


def _every_field_set(path: Path) -> Bundle:
    """A bundle whose every field with a default holds another value (see the test below)."""
    model = {p: ModelFile(p, f"v/a/{p}.xml", f"v/a/{p}.bin") for p in ("fp32", "int8")}
    part = Part(
        name="a", label_map={1: 2, 2: 1}, num_input_channels=2, num_outputs=3, spacing=(1.5, 0.75, 0.75),
        patch_size=(32, 64, 48), transpose_forward=(2, 0, 1), transpose_backward=(1, 2, 0),
        normalization=(Normalization("ZScoreNormalization", True, {"mean": 1.5, "std": 2.0}),
                       Normalization("CTNormalization", True, {"percentile_00_5": -10.0})),
        resampling_data=Resampling(order=1, order_z=1, force_separate_z=True, anisotropy_threshold=2.5),
        resampling_probabilities=Resampling(order=2, order_z=2, force_separate_z=False, anisotropy_threshold=4.0),
        tile_step_size=0.8, use_gaussian=False, use_mirroring=True, mirror_axes=(0, 2), folds=("0", "all"),
        models=model, source={"dataset": "Dataset850_X", "dir": "v/a"},
    )
    pre = PreResample(spacing=(1.5, 1.5, 3.0), order=1, cast=None, mode="nearest", order_back=1,
                      header_float32=True)
    variant = Variant("v", 0, "RAS", pre, (part,), follows="TotalSegmentator 2.18.0 (total_mr default)")
    files = {f: "0" * 64 for m in model.values() for f in (m.xml, m.bin)}
    return Bundle(path=path, schema_version=SCHEMA_VERSION, name="every-field", description="d",
                  intended_use="tests", labels={1: "liver", 2: "spleen"}, variants=(variant,), files=files,
                  validation_report="validation.json", created="2026-01-01T00:00:00+00:00",
                  versions={"edgeseg": "0.0"}, version="2.1", not_for_clinical_use=True,
                  precision_verdicts={"int8": {"verdict": "failed", "remedy": None, "min_dice": 0.5}})


def _fields_left_at_default(obj: Any, where: str = "bundle") -> list[str]:
    if isinstance(obj, (tuple, list)):
        return [f for i, x in enumerate(obj) for f in _fields_left_at_default(x, f"{where}[{i}]")]
    if isinstance(obj, dict):
        return [f for k, x in obj.items() for f in _fields_left_at_default(x, f"{where}.{k}")]
    if not dataclasses.is_dataclass(obj):
        return []
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is not dataclasses.MISSING and value == default:
            out.append(f"{where}.{f.name}")
        out += _fields_left_at_default(value, f"{where}.{f.name}")
    return out


def test_every_field_round_trips_through_the_one_serialisation(tmp_path: Path) -> None:
    """Export writes bundle.json with bundle_to_dict and the runtime reads it with parse_bundle: a field added to
    a dataclass and not to the loader (or the other way round) fails here. Every field with a default is set to
    another value, so a field the loader ignores shows too; a new field makes the first assertion name it."""
    bundle = _every_field_set(tmp_path)
    assert _fields_left_at_default(bundle) == []
    data = bundle_to_dict(bundle)
    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    assert parse_bundle(data, tmp_path) == bundle


def test_the_demo_bundle_loads_unchanged_and_serialises_to_its_own_file() -> None:
    """An existing bundle (the packaged demo, written before ``follows`` existed) loads as it is, and the one
    serialisation writes back exactly its file, plus the keys added since (with their defaults)."""
    from edgeseg.demo import demo_bundle_path

    bundle = load_bundle(demo_bundle_path(), verify=True)
    on_disk = json.loads((bundle.path / "bundle.json").read_text(encoding="utf-8"))
    for variant in on_disk["variants"]:
        variant.setdefault("follows", "")
    assert bundle_to_dict(bundle) == on_disk
    assert parse_bundle(bundle_to_dict(bundle), bundle.path) == bundle


def test_precision_verdicts_are_checked_and_old_bundles_have_none(tmp_path: Path) -> None:
    """bundle.json's ``precision_verdicts`` (issue 19): a bundle without them (every bundle written before the
    fidelity gate) loads with every reduced precision "unchecked"; a bad verdict names its key path."""
    from edgeseg.demo import demo_bundle_path

    data = json.loads((demo_bundle_path() / "bundle.json").read_text(encoding="utf-8"))
    for key in ("precision_verdicts", "version", "not_for_clinical_use"):
        data.pop(key)
    old = parse_bundle(data, tmp_path)
    assert old.verdict("int8") == "unchecked" and old.verdict("fp32") == "passed" and not old.not_for_clinical_use
    data["precision_verdicts"] = {"int8": {"verdict": "maybe"}}
    with pytest.raises(BundleError, match=r"'precision_verdicts\.int8\.verdict' must be one of passed, failed"):
        parse_bundle(data, tmp_path)
    data["precision_verdicts"] = {"fp32": {"verdict": "passed"}}
    with pytest.raises(BundleError, match=r"'precision_verdicts\.fp32' must name a reduced precision"):
        parse_bundle(data, tmp_path)


def test_doctor_and_status_show_each_precisions_verdict(tmp_path: Path) -> None:
    """What ``doctor`` (bundle check) and ``status`` (bundle line) print about the precisions (issue 19)."""
    import shutil

    from edgeseg.demo import demo_bundle_path
    from edgeseg.runtime.watch.commands import _bundle_line

    demo = load_bundle(demo_bundle_path(), verify=False)
    assert demo.describe_precisions().startswith("fp32 (reference), int8 passed (lowest structure Dice 0.96")
    assert "NOT FOR CLINICAL USE" in _bundle_line(demo_bundle_path())
    shutil.copytree(demo_bundle_path(), tmp_path / "b")
    data = json.loads((tmp_path / "b" / "bundle.json").read_text(encoding="utf-8"))
    data["precision_verdicts"]["int8"].update(verdict="failed", min_dice=0.0, remedy=None)
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(data), encoding="utf-8")
    line = _bundle_line(tmp_path / "b")
    assert "int8 FAILED (lowest structure Dice 0.0 iliopsoas_right" in line and "auto never uses it" in line
    assert "holds no bundle.json" in _bundle_line(tmp_path) or "No bundle.json" in _bundle_line(tmp_path)
