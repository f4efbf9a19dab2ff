"""The command-line flags of ``segment``, ``watch`` and ``run``, derived from the schema: the same flag name,
default and help text for the same key in every command.

Every flag's argparse default is None (an unset flag falls through to the environment, the file or the engine's
settings); the help text shows the schema's default. Values land in the namespace under their key path
(``args.time_budget_s``, ``getattr(args, "outputs.preview")``); :func:`flag_values` collects them for the
validator, which names a bad one by its flag (``--device: device: 'TPU' is not a device edgeseg runs on``).
"""
from __future__ import annotations

import argparse
import enum
from pathlib import Path
from typing import Any

from edgeseg.runtime.settings.schema import Key, Kind, keys_for

_TYPES: dict[Kind, type] = {Kind.INT: int, Kind.FLOAT: float}


def shown_default(key: Key, command: str) -> str:
    """The default as ``--help`` and the reference show it (``CPU``, ``none``, ``120``)."""
    value = key.default_for(command)
    if value is None:
        return key.derived if key.derived and command == "watch" else "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def flag_help(key: Key, command: str) -> str:
    """The help text of ``key``'s flag in ``command``: the schema's help, the default, the key it sets."""
    env = f", {key.env}" if command == "watch" and key.env else ""
    if key.kind is Kind.BOOL:
        on = key.flag is not None and not key.flag.startswith("--no-")
        return f"{'' if on else 'do not write: '}{key.help} (sets {key.path}: {str(on).lower()}; default " \
               f"{shown_default(key, command)}{env})"
    return f"{key.help} (default: {shown_default(key, command)}; key {key.path}{env})"


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the flags ``command`` offers (:func:`~edgeseg.runtime.settings.schema.keys_for`) to ``parser``."""
    for path, key in keys_for(command).items():
        assert key.flag is not None, path
        help_text = flag_help(key, command).replace("%", "%%")
        if key.kind is Kind.BOOL:
            on = not key.flag.startswith("--no-")
            parser.add_argument(key.flag, dest=path, action="store_const", const=on, default=None, help=help_text)
        elif key.kind is Kind.PATHS:
            parser.add_argument(key.flag, dest=path, action="append", metavar=key.metavar, default=None,
                                help=help_text)
        elif key.choices is not None:
            parser.add_argument(key.flag, dest=path, choices=[m.value for m in key.choices], type=str.lower,
                                default=None, help=help_text)
        else:
            kind_type: Any = _TYPES.get(key.kind, Path if key.kind in (Kind.PATH, Kind.FILE) else str)
            parser.add_argument(key.flag, dest=path, type=kind_type, metavar=key.metavar, default=None,
                                help=help_text)


def flag_values(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The values of ``command``'s flags by key path (None: not given)."""
    return {path: getattr(args, path, None) for path in keys_for(command)}
