"""edgeseg.runtime.oneshot: one-shot mode, ``edgeseg run``: segment every series of an input folder once into an
output folder and exit with one status, as the engines hospitals already run call a processing step (mercure's
modules, MONAI Deploy application packages, vendor AI platforms). No watcher, no job store, no network.

One module per role:

* :mod:`~edgeseg.runtime.oneshot.engines`: the input and output folders from the command line or the engines'
  variables (``MERCURE_IN_DIR``/``MERCURE_OUT_DIR``, ``MONAI_INPUTPATH``/``MONAI_OUTPUTPATH``,
  ``HOLOSCAN_INPUT_PATH``/``HOLOSCAN_OUTPUT_PATH``), and the bundle;
* :mod:`~edgeseg.runtime.oneshot.settings`: the run's settings (the settings schema's one-shot keys,
  :mod:`edgeseg.runtime.settings`, validated by the same code as ``watch_config.yaml``);
* :mod:`~edgeseg.runtime.oneshot.mercure`: mercure's module contract (``task.json``, ``<SeriesUID>#<file>.dcm``
  with ``.tags``, ``result.json`` with ``__mercure_notification``, ``MODULE_PERSISTENCE_DIR``);
* :mod:`~edgeseg.runtime.oneshot.run`: the run itself (discover, segment each series once, write, summarise);
* :mod:`~edgeseg.runtime.oneshot.commands`: ``edgeseg run``.

Only the command line imports this package; importing it is light (the modules load the runtime when used).
"""
from __future__ import annotations
