"""bundle.json: typed loading, errors that name the bad key, and the sha256 integrity check."""
from __future__ import annotations

import json

import pytest

from edgeseg.bundle import bundle_to_dict, load_bundle
from edgeseg.bundle.schema import parse_bundle
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
    (lambda d: d["variants"][0]["parts"][0].update(tile_step_size="half"), r"variants\[0\]\.parts\[0\]\.tile_step_size"),
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
