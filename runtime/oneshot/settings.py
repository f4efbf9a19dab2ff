"""The settings of a one-shot run: how to segment and which results to write, from the command line and from an
engine's own settings (mercure's ``task.json`` ``process.settings``), validated like ``watch_config.yaml``.

Accepted keys (a documented subset of the watcher's, with the same types, checks and messages;
:mod:`edgeseg.runtime.watch.config` holds the table)::

    variant           bundle variant (default: the most accurate; checked against the bundle)
    precision         auto | int8 | fp16 | fp32
    device            OpenVINO device (CPU; mercure's hardened mode passes no GPU into the container)
    threads           inference threads (null: OpenVINO decides)
    time_budget_s     seconds one series may take: the planner picks the most accurate plan that fits (null: off)
    time_ceiling_s    hard limit per series: refused when even the fastest plan is predicted above it, cancelled
                      when it runs past it (null: none)
    echoes            all | first: of a series holding several 3-D stacks (echoes, Dixon), which to segment
    outputs.dicom_seg, outputs.dicom_sr, outputs.seg_type, outputs.statistics, outputs.preview

Nested (``{"outputs": {"dicom_sr": false}}``) and dotted (``{"outputs.dicom_sr": false}``) spellings are both
accepted. Unknown keys, wrong types and values out of range are :class:`~edgeseg.errors.ConfigError` naming
``<where>: <key path>: <problem>. Fix: <fix>.`` (``task.json: process.settings.outputs.preveiw: unknown key; did you
mean preview?``), every problem at once. Layers, strongest first: command line > the engine's settings > defaults.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgeseg.errors import ConfigError
from edgeseg.runtime.options import OutputOptions
from edgeseg.runtime.watch.config import KEYS, _check, _Key, _Problems, _suggest, _Value

#: the watcher's keys a one-shot run accepts (``variant`` is the one-shot's own: the watcher plans it)
SETTINGS_KEYS: tuple[str, ...] = (
    "variant", "precision", "device", "threads", "time_budget_s", "time_ceiling_s", "echoes",
    "outputs.dicom_seg", "outputs.dicom_sr", "outputs.seg_type", "outputs.statistics", "outputs.preview",
)
#: defaults of a one-shot run where they differ from the watcher's: no budget and no ceiling unless asked for
_DEFAULTS: dict[str, Any] = {"time_budget_s": None, "time_ceiling_s": None}
_VARIANT = _Key("variant", "variant", None, "bundle variant (null: the most accurate)", nullable=True)
_SECTIONS = sorted({k.split(".")[0] for k in SETTINGS_KEYS if "." in k})


def _key(path: str) -> _Key:
    return _VARIANT if path == "variant" else KEYS[path]


@dataclass(frozen=True)
class OneShotSettings:
    """The validated settings of one run. ``origins``: key path -> where its value came from, as messages name
    it (``/tmp/data/task.json: process.settings.variant``, ``--variant``); keys left at their default are absent."""

    variant: str | None = None
    precision: str = "auto"
    device: str = "CPU"
    threads: int | None = None
    time_budget_s: float | None = None
    time_ceiling_s: float | None = None
    echoes: str = "all"
    outputs: OutputOptions = field(default_factory=OutputOptions)
    origins: dict[str, str] = field(default_factory=dict)

    def where(self, key: str) -> str:
        """How messages name ``key``'s origin (``task.json: process.settings.variant``), or ``default: key``."""
        return self.origins.get(key, f"default: {key}")


class _SettingsProblems(_Problems):
    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def raise_if_any(self) -> None:
        if self.lines:
            more = f" (and {len(self.lines) - 1} more problem(s) below)" if len(self.lines) > 1 else ""
            raise ConfigError(f"Invalid {self.what}{more}:\n  " + "\n  ".join(self.lines))


def _flatten(raw: Mapping[str, Any], where: str, prefix: str, problems: _Problems) -> dict[str, Any]:
    """``{"outputs": {"preview": x}}`` and ``{"outputs.preview": x}`` -> ``{"outputs.preview": x}``; unknown keys and
    sections that are not mappings are recorded."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        if key in _SECTIONS:
            sub_known = [k.split(".", 1)[1] for k in SETTINGS_KEYS if k.startswith(key + ".")]
            if not isinstance(value, Mapping):
                problems.add(where, prefix + key, f"must be a mapping of {', '.join(sub_known)}",
                             f"write {{\"{key}\": {{\"{sub_known[0]}\": ...}}}}")
                continue
            for sub, sub_value in value.items():
                full = f"{key}.{sub}"
                if full not in SETTINGS_KEYS:
                    problems.add(where, prefix + full, "unknown key" + _suggest(str(sub), sub_known),
                                 f"correct or remove it (keys under {key}: {', '.join(sub_known)})")
                    continue
                out[full] = sub_value
        elif key in SETTINGS_KEYS:
            out[key] = value
        else:
            problems.add(where, prefix + key, "unknown key" + _suggest(key, list(SETTINGS_KEYS)),
                         f"correct or remove it (known keys: {', '.join(SETTINGS_KEYS)})")
    return out


def _check_variant(value: Any, where: str, key: str, problems: _Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.add(where, key, f"must be the name of a bundle variant, got {value!r}",
                     "write the variant's name as bundle.json lists it (e.g. \"3mm\"), or null")
        return None
    return value.strip()


def settings_from(layers: list[tuple[Mapping[str, Any], str, str]], what: str = "settings") -> OneShotSettings:
    """Merge and validate settings layers, weakest first: each ``(values, where, key_prefix)``; ``where`` names
    the source in messages (a file path, "command line"), ``key_prefix`` is put before each key
    (``process.settings.``). Values that are None in a layer are ignored (an unset flag falls through). Raises
    :class:`ConfigError` listing every problem of every layer."""
    problems = _SettingsProblems(what)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for raw, where, prefix in layers:
        if not isinstance(raw, Mapping):
            problems.add(where, prefix.rstrip(".") or "settings", f"must be a mapping of keys, not "
                         f"{type(raw).__name__}", f"write a JSON object with keys among {', '.join(SETTINGS_KEYS)}")
            continue
        for path, value in _flatten(raw, where, prefix, problems).items():
            if value is None and path not in ("variant", "threads", "time_budget_s", "time_ceiling_s"):
                continue  # an unset flag
            key = _key(path)
            shown = dataclasses.replace(key, path=prefix + path)
            if path == "variant":
                checked = _check_variant(value, where, shown.path, problems)
            else:
                checked = _check(shown, _Value(value, "settings", where, Path.cwd()), problems, check_paths=False)
            values[path] = checked
            origins[path] = f"{where}: {prefix}{path}"
    problems.raise_if_any()

    def get(path: str) -> Any:
        return values[path] if path in values else _DEFAULTS.get(path, _key(path).default)

    budget, ceiling = get("time_budget_s"), get("time_ceiling_s")
    if budget is not None and ceiling is not None and ceiling < budget:
        problems.add(origins.get("time_ceiling_s", "default"), "time_ceiling_s",
                     f"{ceiling:g} s is below time_budget_s ({budget:g} s)",
                     "set time_ceiling_s to at least time_budget_s (or null for no ceiling)")
        problems.raise_if_any()
    return OneShotSettings(
        variant=get("variant"), precision=get("precision"), device=get("device"), threads=get("threads"),
        time_budget_s=budget, time_ceiling_s=ceiling, echoes=get("echoes"),
        outputs=OutputOptions(dicom_seg=get("outputs.dicom_seg"), dicom_sr=get("outputs.dicom_sr"),
                              seg_type=get("outputs.seg_type"), statistics=get("outputs.statistics"),
                              preview=get("outputs.preview")),
        origins=origins)


def check_variant(settings: OneShotSettings, variants: list[str]) -> None:
    """:class:`ConfigError` naming where ``variant`` came from when the bundle has no such variant."""
    if settings.variant is None or settings.variant in variants:
        return
    close = difflib.get_close_matches(settings.variant, variants, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    end = "" if hint else "."
    raise ConfigError(f"Invalid settings:\n  {settings.where('variant')}: the bundle has no variant "
                      f"{settings.variant!r}{hint}{end} Fix: use one of {', '.join(variants)} (or leave it out for the "
                      "most accurate).")
