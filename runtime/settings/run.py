"""The settings of a run that happens once: ``edgeseg segment`` (command line only) and ``edgeseg run`` (one-shot
mode: the command line over an engine's own settings, mercure's ``task.json`` ``process.settings``).

The keys are the schema's (:data:`~edgeseg.runtime.settings.schema.KEYS`), checked by the one validator with the
same messages as ``watch_config.yaml``; :func:`settings_from` merges layers, weakest first.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from edgeseg.errors import ConfigError
from edgeseg.runtime.options import OutputOptions, SegmentOptions
from edgeseg.runtime.read.selection import SelectionRules
from edgeseg.runtime.settings.enums import Echoes, Precision
from edgeseg.runtime.settings.schema import ONESHOT_KEYS, Key, default, keys_for
from edgeseg.runtime.settings.validate import Problems, Value, check_budget_and_ceiling, read_mapping, resolve

_RUN = "run"


def _d(path: str) -> Any:
    return default(path, _RUN)


@dataclass(frozen=True)
class RunSettings:
    """The validated settings of one run. ``origins``: key path -> where its value came from, as messages name
    it (``/tmp/data/task.json: process.settings.variant``, ``command line: precision``); keys left at their
    default are absent."""

    variant: str | None = _d("variant")
    precision: Precision = _d("precision")
    device: str = _d("device")
    threads: int | None = _d("threads")
    time_budget_s: float | None = _d("time_budget_s")
    time_ceiling_s: float | None = _d("time_ceiling_s")
    echoes: Echoes = _d("echoes")
    outputs: OutputOptions = field(default_factory=OutputOptions)
    #: the series selection rules (``selection.*``, with ``echoes`` as their multi-volume rule)
    selection: SelectionRules = field(default_factory=lambda: selection_rules(_d))
    origins: dict[str, str] = field(default_factory=dict)

    def where(self, key: str) -> str:
        """How messages name ``key``'s origin (``task.json: process.settings.variant``), or ``default: key``."""
        return self.origins.get(key, f"default: {key}")

    def segment_options(self, cache_dir: Path | None = None) -> SegmentOptions:
        """The :class:`SegmentOptions` a series is segmented with (the planner may still pick the variant)."""
        return SegmentOptions(device=self.device, precision=self.precision, variant=self.variant,
                              threads=self.threads, cache_dir=cache_dir, time_budget_s=self.time_budget_s,
                              outputs=self.outputs)


def settings_from(layers: list[tuple[Mapping[str, Any], str, str]], what: str = "settings",
                  keys: Mapping[str, Key] | None = None) -> RunSettings:
    """Merge and validate settings layers, weakest first: each ``(values, where, key_prefix)``; ``where`` names
    the source in messages (a file path, "command line"), ``key_prefix`` is put before each key
    (``process.settings.``). ``keys``: the keys accepted (default: a one-shot run's,
    :data:`~edgeseg.runtime.settings.schema.ONESHOT_KEYS`). Values that are None in a layer are ignored unless
    the key may be null (an unset flag falls through). Raises :class:`ConfigError` listing every problem of every
    layer."""
    accepted = dict(ONESHOT_KEYS if keys is None else keys)
    problems = Problems(what)
    read: list[dict[str, Value]] = []
    origins: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    for raw, where, prefix in layers:
        if not isinstance(raw, Mapping):
            problems.add(where, prefix.rstrip(".") or "settings", f"must be a mapping of keys, not "
                         f"{type(raw).__name__}", f"write a JSON object with keys among {', '.join(accepted)}")
            continue
        layer = {p: v for p, v in read_mapping(raw, where, accepted, problems, prefix=prefix).items()
                 if v.value is not None or accepted[p].nullable}  # None for a required key: an unset flag
        read.append(layer)
        for path in layer:
            origins[path] = f"{where}: {prefix}{path}"
            prefixes[path] = prefix
    # each value is checked under the key path its own layer names it by
    values, merged = resolve(accepted, read, problems, command=_RUN, prefix=prefixes)
    problems.raise_if_any()
    check_budget_and_ceiling(values, merged, problems)
    problems.raise_if_any()

    def get(path: str) -> Any:
        return values[path] if path in values else _d(path)

    return RunSettings(
        variant=get("variant"), precision=get("precision"), device=get("device"), threads=get("threads"),
        time_budget_s=get("time_budget_s"), time_ceiling_s=get("time_ceiling_s"), echoes=get("echoes"),
        outputs=OutputOptions(per_structure=get("outputs.per_structure"), dicom_seg=get("outputs.dicom_seg"),
                              dicom_sr=get("outputs.dicom_sr"), seg_type=get("outputs.seg_type"),
                              statistics=get("outputs.statistics"), preview=get("outputs.preview")),
        selection=selection_rules(get),
        origins=origins)


def selection_rules(get: Callable[[str], Any]) -> SelectionRules:
    """The :class:`~edgeseg.runtime.read.selection.SelectionRules` of validated settings (``get``: key path ->
    value): the ``selection.*`` keys, and ``echoes`` as the multi-volume rule."""
    return SelectionRules(
        enabled=get("selection.enabled"), modalities=tuple(get("selection.modalities")),
        secondary_capture=get("selection.secondary_capture"),
        exclude_image_types=tuple(get("selection.exclude_image_types")),
        require_image_types=tuple(get("selection.require_image_types")),
        exclude_descriptions=tuple(get("selection.exclude_descriptions")),
        include_descriptions=tuple(get("selection.include_descriptions")),
        min_slices=get("selection.min_slices"), max_volumes=get("selection.max_volumes"),
        multi_volume=str(get("echoes")))


def segment_settings(flags: Mapping[str, Any]) -> RunSettings:
    """``edgeseg segment``'s settings: its flags (by key path, None: unset) over the schema's defaults."""
    keys = {p: k for p, k in keys_for("segment").items() if p != "bundle"}  # the command resolves its bundle
    return settings_from([({p: v for p, v in flags.items() if p in keys}, "command line", "")], keys=keys)


def check_variant(settings: RunSettings, variants: list[str]) -> None:
    """:class:`ConfigError` naming where ``variant`` came from when the bundle has no such variant."""
    if settings.variant is None or settings.variant in variants:
        return
    close = difflib.get_close_matches(settings.variant, variants, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    end = "" if hint else "."
    raise ConfigError(f"Invalid settings:\n  {settings.where('variant')}: the bundle has no variant "
                      f"{settings.variant!r}{hint}{end} Fix: use one of {', '.join(variants)} (or leave it out for the "
                      "most accurate).")
