"""The configuration reference (``docs/configuration.md``) and the example ``watch_config.yaml``, both written from
the schema (:mod:`edgeseg.runtime.settings.schema`).

Usage (from the repository root)::

    python -m edgeseg.runtime.settings.reference --write   # rewrite docs/configuration.md and watch_config.yaml
    python -m edgeseg.runtime.settings.reference --check   # exit 1 when either differs from the schema

``tests/runtime/test_settings_schema.py`` fails when the committed files drift from the schema.
"""
from __future__ import annotations

import argparse
import enum
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

from edgeseg.runtime.settings.flags import shown_default
from edgeseg.runtime.settings.schema import (
    COMMANDS, DESTINATION_KEYS, DESTINATION_REQUIRED, KEYS, SECTION_DOCS, SAME, WATCH_KEYS, Key, Kind,
)

#: the repository root (the checkout this module lives in: runtime/settings/ -> ../..)
REPO = Path(__file__).resolve().parents[2]
DOC_PATH = REPO / "docs" / "configuration.md"
YAML_PATH = REPO / "watch_config.yaml"
_WIDTH = 116

_YAML_HEADER = """\
# edgeseg watcher configuration (`edgeseg watch --config watch_config.yaml`).
# Written from the settings schema (runtime/settings/schema.py) by
# `python -m edgeseg.runtime.settings.reference --write`; docs/configuration.md is the full reference.
#
# Every key is optional except roots. Relative paths are resolved against the folder of THIS file.
# Precedence: command line (--root, --bundle, --device, --quiet-period, ...) > environment > this file > defaults.
# Environment variables: EDGESEG_<KEY>, with "__" for a nested key, e.g. EDGESEG_QUIET_PERIOD_S=30,
# EDGESEG_DEVICE=GPU, EDGESEG_OUTPUTS__PREVIEW=false, EDGESEG_ROOTS=/data/a:/data/b (";" on Windows).
# An unknown key, a wrong type or a missing folder stops the watcher at start with the key and the fix.
# `edgeseg doctor --config watch_config.yaml` checks this PC against this file.
"""


def _comment(text: str, indent: str = "") -> list[str]:
    """``text`` as wrapped ``# `` comment lines; lines of ``text`` that start with a space are kept as they are."""
    out: list[str] = []
    for paragraph in text.split("\n"):
        if paragraph.startswith(" "):
            out.append(f"{indent}# {paragraph.rstrip()}")
            continue
        out.extend(textwrap.wrap(paragraph, _WIDTH - len(indent) - 2, initial_indent=f"{indent}# ",
                                 subsequent_indent=f"{indent}# ", break_on_hyphens=False))
    return out


def yaml_value(value: Any) -> str:
    """``value`` in YAML flow style (``60``, ``null``, ``[seg, sr]``, ``["*"]``)."""
    import yaml

    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    text: str = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def render_yaml() -> str:
    """The example ``watch_config.yaml``: every key of the schema, its explanation as comments, a useful value."""
    lines = _YAML_HEADER.rstrip("\n").split("\n")
    section: str | None = None
    for key in WATCH_KEYS.values():
        if key.section != section and key.section is not None:
            lines.append("")
            lines.extend(_comment(SECTION_DOCS.get(key.section, "")))
            lines.append(f"{key.section}:")
        elif key.section is None:
            lines.append("")
        section = key.section
        indent = "  " if key.section else ""
        lines.extend(_comment(key.doc or key.help, indent))
        value = key.default if key.example is SAME else key.example
        entry = f"{indent}{key.name}: {yaml_value(value)}"
        if key.example_commented:
            lines.append(f"{indent}# {entry.strip()}")
        elif key.kind is Kind.PATHS and value:  # block style: one folder a line (the installers rewrite it)
            lines.append(f"{indent}{key.name}:")
            lines.extend(f"{indent}  - {yaml_value(item)}" for item in value)
        elif len(entry) > _WIDTH and entry.endswith("]"):  # a long flow list, continued under its first item
            lead = " " * (len(indent) + len(key.name) + 3)
            lines.extend(textwrap.wrap(entry, _WIDTH, subsequent_indent=lead, break_long_words=False,
                                       break_on_hyphens=False))
        else:
            lines.append(entry)
    return "\n".join(lines) + "\n"


def _md_default(key: Key) -> str:
    watch = shown_default(key, "watch") if key.watch else None
    once = shown_default(key, "segment") if key.oneshot or "segment" in key.commands else None
    if key.oneshot_default is not SAME:
        return f"`{watch}` (watch); `{once}` (segment, run)"
    if key.default is None and key.derived:
        return f"{key.derived}"
    value = watch if watch is not None else once
    return f"`{value}`"


def _md_key(key: Key) -> list[str]:
    lines = [f"### `{key.path}`", "", key.doc or key.help, ""]
    lines.append(f"- type: {key.kind.value}{' or null' if key.nullable else ''}")
    lines.append(f"- default: {_md_default(key)}")
    lines.append(f"- allowed: {key.allowed()}")
    where = []
    if key.watch:
        where.append(f"`watch_config.yaml`, environment `{key.env}`")
    if key.oneshot:
        where.append("one-shot settings (mercure `process.settings`)")
    if key.flag:
        where.append(f"flag `{key.flag}` ({', '.join(key.commands)})")
    lines.append(f"- set by: {'; '.join(where)}")
    if key.doc:
        lines.append(f"- in short: {key.help}")
    return lines + [""]


def render_markdown() -> str:
    """``docs/configuration.md``: every key with its type, default, allowed values, environment variable, flag and
    help."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Written from runtime/settings/schema.py by `python -m edgeseg.runtime.settings.reference --write`; "
        "do not edit by hand (tests/runtime/test_settings_schema.py fails when it drifts). -->",
        "",
        "Every setting of edgeseg is one key of one schema (`edgeseg.runtime.settings.schema`). The same key has "
        "the same name, type, checks and messages wherever it is set:",
        "",
        "- `edgeseg watch`: command line > environment (`EDGESEG_<KEY>`, dots as `__`: `EDGESEG_OUTPUTS__PREVIEW`; "
        "lists separated by the OS path separator, or comma for AE titles, hosts and UIDs, or written as YAML "
        "`[a, b]`) > `watch_config.yaml` (`--config`, or `EDGESEG_WATCH_CONFIG`) > defaults.",
        "- `edgeseg run` (one-shot mode): command line > the engine's settings (mercure's `task.json` "
        "`process.settings`, nested `{\"outputs\": {\"preview\": false}}` or dotted `{\"outputs.preview\": false}`) "
        "> defaults.",
        "- `edgeseg segment`: command line > defaults.",
        "",
        "A problem is reported as `<where>: <key path>: <problem>. Fix: <fix>.` naming the file, the environment "
        "variable or the flag the value came from; every problem at once, unknown keys with a did-you-mean.",
        "",
        "## Flags",
        "",
        "| key | " + " | ".join(COMMANDS) + " |",
        "|---|" + "---|" * len(COMMANDS),
    ]
    for key in KEYS.values():
        if key.flag:
            cells = [f"`{key.flag}`" if c in key.commands else "" for c in COMMANDS]
            out.append(f"| `{key.path}` | " + " | ".join(cells) + " |")
    out += ["", "Each flag's default is the key's default below (unset flags fall through to the environment, the "
            "file or the engine's settings).", "", "## Keys", ""]
    section: str | None = None
    for key in KEYS.values():
        if key.section != section and key.section is not None:
            out += [f"## `{key.section}`", "", SECTION_DOCS.get(key.section, ""), ""]
        section = key.section
        out += _md_key(key)
    out += ["## A `destinations` entry", "",
            f"Required: {', '.join(f'`{k}`' for k in DESTINATION_REQUIRED)}. Checked by the same rules, named "
            "`destinations[<i>].<key>` in messages.", "",
            "| key | type | default | allowed | help |", "|---|---|---|---|---|"]
    for key in DESTINATION_KEYS.values():
        required = key.path in DESTINATION_REQUIRED
        shown = "required" if required else f"`{yaml_value(key.default)}`"
        out.append(f"| `{key.path}` | {key.kind.value} | {shown} | {key.allowed()} | {key.help} |")
    return "\n".join(out).rstrip() + "\n"


def outputs() -> dict[Path, str]:
    """The generated files and their text."""
    return {DOC_PATH: render_markdown(), YAML_PATH: render_yaml()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeseg.runtime.settings.reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="write docs/configuration.md and watch_config.yaml")
    group.add_argument("--check", action="store_true", help="exit 1 when either differs from the schema")
    args = parser.parse_args(argv)
    stale = [path for path, text in outputs().items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text]
    if args.write:
        for path in stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(outputs()[path], encoding="utf-8")
            print(f"wrote {path}")
        return 0
    for path in stale:
        print(f"{path} differs from the schema: run python -m edgeseg.runtime.settings.reference --write")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

