"""The settings schema is the one source: the generated reference and example file match it, every key has one
default (the typed objects agree with it), and each command's flags and --help are the schema's."""
from __future__ import annotations

import argparse
import dataclasses
import enum
import re
from pathlib import Path

import pytest

from edgeseg.runtime.settings import reference
from edgeseg.runtime.settings.enums import Echoes, Precision, SegType, values
from edgeseg.runtime.settings.flags import shown_default
from edgeseg.runtime.settings.schema import COMMANDS, KEYS, ONESHOT_KEYS, SAME, WATCH_KEYS, Kind, keys_for

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted(reference.outputs(), key=str))
def test_generated_files_match_the_schema(path: Path) -> None:
    assert path.read_text(encoding="utf-8") == reference.outputs()[path], (
        f"{path.relative_to(REPO)} drifted from runtime/settings/schema.py: run "
        "`python -m edgeseg.runtime.settings.reference --write`")


def test_the_reference_names_every_key_its_env_variable_and_flag() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for key in KEYS.values():
        assert f"### `{key.path}`" in text
        if key.env:
            assert f"`{key.env}`" in text
        if key.flag:
            assert f"`{key.flag}`" in text


def test_the_example_file_holds_every_watch_key() -> None:
    import yaml

    data = yaml.safe_load((REPO / "watch_config.yaml").read_text(encoding="utf-8"))
    flat = {f"{k}.{sub}" if isinstance(v, dict) else k for k, v in data.items()
            for sub in (v if isinstance(v, dict) else [None])}
    commented = {p for p, k in WATCH_KEYS.items() if k.example_commented}
    assert flat == set(WATCH_KEYS) - commented


def _defaults(obj: object) -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_every_key_has_one_default_which_the_typed_objects_share() -> None:
    """Each typed object's default of a key is the schema's (the objects take theirs from it, or the schema from
    them): a default written twice cannot drift."""
    from edgeseg.runtime.node.settings import DeliverySettings, ListenerSettings
    from edgeseg.runtime.options import OutputOptions, SegmentOptions
    from edgeseg.runtime.read.limits import ReadLimits
    from edgeseg.runtime.read.selection import SelectionRules
    from edgeseg.runtime.settings.run import RunSettings
    from edgeseg.runtime.watch.config import AlertSettings, StatusPageSettings, WatchConfig
    from edgeseg.runtime.watch.retention import RetentionPolicy

    objects: list[tuple[object, str, str]] = [
        (WatchConfig, "", "watch"), (RunSettings, "", "run"), (SegmentOptions, "", "segment"),
        (OutputOptions, "outputs.", "watch"), (ReadLimits, "limits.", "watch"),
        (SelectionRules, "selection.", "watch"), (RetentionPolicy, "retention.", "watch"),
        (ListenerSettings, "dicom_listener.", "watch"), (DeliverySettings, "delivery.", "watch"),
        (StatusPageSettings, "status_page.", "watch"), (AlertSettings, "alerts.", "watch")]
    checked = set()
    for obj, prefix, command in objects:
        for name, value in _defaults(obj).items():
            key = KEYS.get(prefix + name)
            if key is None or key.default is None and key.derived:
                continue
            value = str(value) if isinstance(value, Path) else value
            assert value == key.default_for(command), f"{obj.__name__}.{name}"  # type: ignore[attr-defined]
            checked.add(key.path)
    # every key with a plain default is held by some typed object, or is a list/section value built at load time, or
    # is required (roots, bundle: nothing runs a model nobody named)
    unchecked = {p for p, k in KEYS.items() if p not in checked and not k.derived}
    assert KEYS["bundle"].default is None
    assert unchecked <= {"roots", "bundle", "dicom_listener.tls_certificate", "dicom_listener.tls_key",
                         "dicom_listener.tls_ca", "dicom_listener.tls_require_peer_certificate",
                         "destinations"}, unchecked
    # the only keys with a second default are the budget and the ceiling (a watcher needs them, a run does not)
    assert {p for p, k in KEYS.items() if k.oneshot_default is not SAME} == {"time_budget_s", "time_ceiling_s"}


def test_closed_sets_are_enums_shared_with_the_code() -> None:
    from edgeseg.runtime.infer.engine import PRECISIONS
    from edgeseg.runtime.options import SEG_TYPES
    from edgeseg.runtime.read.headers import ECHOES

    assert values(Precision) == PRECISIONS and values(SegType) == SEG_TYPES and values(Echoes) == ECHOES
    for key in KEYS.values():
        assert (key.kind is Kind.ENUM) == (key.choices is not None and issubclass(key.choices, enum.Enum))


def test_one_shot_keys_and_environment_names() -> None:
    assert set(ONESHOT_KEYS) - set(WATCH_KEYS) == {"variant"}
    assert KEYS["outputs.preview"].env == "EDGESEG_OUTPUTS__PREVIEW"
    assert KEYS["variant"].env is None  # not a watcher key


def _subparser(command: str) -> argparse.ArgumentParser:
    from edgeseg.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_offers_the_schemas_flags_with_its_defaults(command: str) -> None:
    p = _subparser(command)
    by_dest = {a.dest: a for a in p._actions}
    help_text = re.sub(r"\s+", " ", p.format_help())
    for path, key in keys_for(command).items():
        action = by_dest[path]
        assert key.flag in action.option_strings
        assert action.default is None  # unset falls through; the default is the schema's, shown in the help
        assert key.help.split(" (")[0][:40] in action.help  # type: ignore[operator]
        shown = shown_default(key, command)
        assert f"default: {shown}" in help_text or f"default {shown}" in help_text, (command, path, shown)
    # the same key has the same flag wherever it is offered, and a flag is never another key's
    flags = {a.option_strings[0]: a.dest for a in p._actions if a.option_strings}
    for key in KEYS.values():
        if key.flag in flags:
            assert flags[key.flag] == key.path or command == "run" and key.path == "bundle"


def test_flags_reach_the_settings() -> None:
    from edgeseg.runtime.settings.flags import flag_values
    from edgeseg.runtime.settings.run import segment_settings

    args = _subparser("segment").parse_args(["in.nii.gz", "--precision", "FP32", "--no-preview", "--time-budget",
                                             "30", "--echoes", "first", "--device", "gpu"])
    s = segment_settings(flag_values(args, "segment"))
    assert (s.precision, s.outputs.preview, s.time_budget_s, s.echoes, s.device) == ("fp32", False, 30.0, "first",
                                                                                       "GPU")
    assert s.outputs.dicom_seg is True and s.time_ceiling_s is None
