"""The settings of a one-shot run: how to segment and which results to write, from the command line and from an
engine's own settings (mercure's ``task.json`` ``process.settings``), validated like ``watch_config.yaml``.

The accepted keys are the schema's one-shot keys (:data:`~edgeseg.runtime.settings.schema.ONESHOT_KEYS`; the
reference ``docs/configuration.md`` lists them): variant, precision, device, threads, time_budget_s,
time_ceiling_s, echoes and outputs.dicom_seg, dicom_sr, seg_type, statistics, preview. Nested
(``{"outputs": {"dicom_sr": false}}``) and dotted (``{"outputs.dicom_sr": false}``) spellings are both accepted.
Unknown keys, wrong types and values out of range are :class:`~edgeseg.errors.ConfigError` naming ``<where>: <key
path>: <problem>. Fix: <fix>.`` (``task.json: process.settings.outputs.preveiw: unknown key; did you mean
preview?``), every problem at once. Layers, strongest first: command line > the engine's settings > defaults.

The settings object and its validator live in :mod:`edgeseg.runtime.settings.run` (``edgeseg segment`` uses them
too); this module names them for one-shot mode.
"""
from __future__ import annotations

from typing import Final

from edgeseg.runtime.settings.run import RunSettings, check_variant, settings_from
from edgeseg.runtime.settings.schema import ONESHOT_KEYS

__all__ = ["SETTINGS_KEYS", "OneShotSettings", "check_variant", "settings_from"]

#: the keys a one-shot run accepts (``variant`` is the one-shot's own: the watcher plans it)
SETTINGS_KEYS: Final[tuple[str, ...]] = tuple(ONESHOT_KEYS)
#: the validated settings of one run
OneShotSettings = RunSettings
