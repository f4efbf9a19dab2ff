"""edgeseg's one settings schema and everything derived from it.

* :mod:`~edgeseg.runtime.settings.enums`: the closed value sets (observer, precision, seg_type, echoes, device
  family), a leaf every module may import.
* :mod:`~edgeseg.runtime.settings.schema`: one :class:`~edgeseg.runtime.settings.schema.Key` per setting (key path,
  kind, the one default, bounds, allowed values, help, flag, which commands offer it); the environment variable and
  the flag are derived from it.
* :mod:`~edgeseg.runtime.settings.validate`: the one validator: layers (file, environment, command line, an engine's
  settings) read into values with their origin, checked with every problem collected (``<where>: <key path>:
  <problem>. Fix: <fix>.``, did-you-mean for unknown keys), merged strongest first.
* :mod:`~edgeseg.runtime.settings.flags`: the argparse flags of ``segment``, ``watch`` and ``run``.
* :mod:`~edgeseg.runtime.settings.run`: :class:`~edgeseg.runtime.settings.run.RunSettings`, the settings of one
  ``segment`` or one-shot run.
* :mod:`~edgeseg.runtime.settings.reference`: writes ``docs/configuration.md`` and ``watch_config.yaml``
  (``python -m edgeseg.runtime.settings.reference --write``).

The watcher's :class:`~edgeseg.runtime.watch.config.WatchConfig` is built from the same values by
:mod:`edgeseg.runtime.watch.config`. This package never imports the watcher. Its ``__init__`` imports nothing, so
that the leaves (``options``, ``read``) can import :mod:`~edgeseg.runtime.settings.enums` without cycles.
"""
