"""mercure's processing-module contract, as mercure describes and runs it (``docs/modules.rst``,
``app/process/process_series.py``, ``app/common/types.py`` of mercure-imaging/mercure).

What mercure gives a module (a container it starts once per task):

* ``MERCURE_IN_DIR`` (and, for MONAI application packages, ``MONAI_INPUTPATH``/``HOLOSCAN_INPUT_PATH`` set to the same
  folder): the DICOM files of the series (series-level rule) or of every series of the study (study-level rule),
  each named ``<SeriesInstanceUID>#<file>.dcm`` with a ``<SeriesInstanceUID>#<file>.tags`` JSON sidecar of its main
  tags (SeriesInstanceUID, SOPInstanceUID, SeriesDescription, Modality, ...), plus ``task.json``: mercure's ``Task``
  (``id``, ``info`` with ``uid``/``uid_type``/``applied_rule``/..., ``process`` with ``module_name`` and
  ``settings``, the module's and the rule's settings merged; ``dispatch``, ``study``);
* ``MODULE_PERSISTENCE_DIR``: a folder kept between tasks, when the module is configured with
  ``requires_persistence``.

What mercure takes back from ``MERCURE_OUT_DIR``: every ``*.dcm`` is dispatched to the rule's targets;
``result.json`` is stored in its database, and its ``__mercure_notification`` (``text``, ``requested``) feeds the
rule's notifications. A non-zero exit status moves the task to mercure's error folder (nothing is dispatched).

edgeseg's side: :func:`read_task` (the ``process.settings`` validated like ``watch_config.yaml``,
:mod:`edgeseg.runtime.oneshot.settings`), :func:`announced_series` (the series mercure's file names announce, with
their ``.tags``), :func:`dispatch_name` (how a DICOM result is named in the output) and
:func:`model_cache_dir` (the compiled-model cache in the persistence folder).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgeseg.errors import ConfigError
from edgeseg.runtime.oneshot.settings import OneShotSettings, settings_from

#: the task file mercure writes into the input folder
TASK_FILE = "task.json"
#: the results file mercure stores (any JSON; ``__mercure_notification`` is read by its notifications)
RESULT_FILE = "result.json"
#: the key of ``result.json`` mercure's notifications read: ``{"text": str, "requested": bool}``
NOTIFICATION_KEY = "__mercure_notification"
#: the folder mercure keeps between tasks for a module configured with ``requires_persistence``
PERSISTENCE_VARIABLE = "MODULE_PERSISTENCE_DIR"
#: separator of mercure's file names: ``<SeriesInstanceUID>#<file>.dcm``
SEPARATOR = "#"
#: mercure's sidecar of each DICOM file: its main tags as JSON
TAGS_SUFFIX = ".tags"
#: the key path under which a module's settings sit in task.json
SETTINGS_PATH = "process.settings."


@dataclass(frozen=True)
class MercureTask:
    """The parts of mercure's ``Task`` a module uses. ``settings``: ``process.settings`` as given (validated by
    :func:`read_task`)."""

    path: Path
    id: str
    info: Mapping[str, Any]
    module_name: str | None
    settings: Mapping[str, Any]

    @property
    def uid(self) -> str | None:
        """``info.uid``: the series or study UID the rule fired for."""
        value = self.info.get("uid")
        return str(value) if value else None

    @property
    def uid_type(self) -> str | None:
        """``info.uid_type``: "series" or "study"."""
        value = self.info.get("uid_type")
        return str(value) if value else None


def is_mercure_input(folder: Path) -> bool:
    """Whether ``folder`` looks like mercure's input: it holds ``task.json``."""
    return (folder / TASK_FILE).is_file()


def read_task(folder: Path) -> MercureTask:
    """Read ``<folder>/task.json`` as mercure writes it. ``process`` is one processing step (mercure hands each
    module of a pipeline its own step) or a list holding exactly one. Raises :class:`ConfigError` naming the file
    and key path for a task file that is not mercure's."""
    path = folder / TASK_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{path} does not exist: mercure writes task.json beside the images it hands a module. "
                          "Fix: run under mercure, or give --layout folders for a plain folder of series.") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable JSON task file ({err}). Fix: check what wrote it; mercure "
                          "writes it as JSON.") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be mercure's Task object, not {type(data).__name__}.")
    missing = [k for k in ("id", "info") if k not in data]
    if missing:
        raise ConfigError(f"{path}: {', '.join(missing)}: missing; mercure's Task always has id and info. Fix: "
                          "check the mercure version and what wrote the file.")
    info = data.get("info")
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: info: must be an object (mercure's TaskInfo), not {type(info).__name__}.")
    process: Any = data.get("process") or {}
    if isinstance(process, list):
        if len(process) != 1:
            raise ConfigError(f"{path}: process: a list of {len(process)} processing steps; mercure hands a module "
                              "only its own step. Fix: run edgeseg as one step of a mercure rule.")
        process = process[0]
    if not isinstance(process, dict):
        raise ConfigError(f"{path}: process: must be an object (mercure's TaskProcessing), not "
                          f"{type(process).__name__}.")
    settings = process.get("settings") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"Invalid module settings:\n  {path}: process.settings: must be an object of settings, not "
                          f"{type(settings).__name__}. Fix: write the module settings in mercure as a JSON object.")
    module = process.get("module_name")
    return MercureTask(path=path, id=str(data["id"]), info=info, module_name=str(module) if module else None,
                       settings=settings)


def task_settings_layer(task: MercureTask) -> tuple[Mapping[str, Any], str, str]:
    """The task's ``process.settings`` as a settings layer (:func:`~edgeseg.runtime.oneshot.settings.settings_from`)."""
    return task.settings, str(task.path), SETTINGS_PATH


def settings_of(task: MercureTask) -> OneShotSettings:
    """The task's module settings alone, validated (unknown keys, wrong types: :class:`ConfigError`)."""
    return settings_from([task_settings_layer(task)], what="module settings")


@dataclass
class AnnouncedSeries:
    """A series as mercure's file names announce it: ``uid`` (the part before ``#``), its ``.dcm`` files and the
    main tags of its first ``.tags`` sidecar (empty when none could be read)."""

    uid: str
    files: list[Path] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return str(self.tags.get("SeriesDescription") or "")


def announced_series(folder: Path) -> dict[str, AnnouncedSeries]:
    """SeriesInstanceUID -> :class:`AnnouncedSeries` for every ``<uid>#<file>.dcm`` directly in ``folder``."""
    found: dict[str, AnnouncedSeries] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != ".dcm" or SEPARATOR not in path.name or not path.is_file():
            continue
        uid = path.name.split(SEPARATOR, 1)[0]
        series = found.setdefault(uid, AnnouncedSeries(uid))
        series.files.append(path)
        if not series.tags:
            series.tags = _read_tags(path.with_suffix(TAGS_SUFFIX))
    return found


def _read_tags(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def dispatch_name(series_uid: str | None, result_name: str, role: str, suffix: str = ".dcm") -> str:
    """The file name of a DICOM result in mercure's output, in mercure's own convention
    ``<SeriesInstanceUID of the object>#<file>.dcm`` (a next module in a pipeline splits it at ``#`` too):
    ``1.2.3#t1_vibe_dicom_seg.dcm``. Characters outside ``[A-Za-z0-9._-]`` in the name become ``_``."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{result_name}_{role}")
    uid = "".join(c for c in (series_uid or "") if c.isdigit() or c == ".") or "edgeseg"
    return f"{uid}{SEPARATOR}{safe}{suffix}"


def model_cache_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """``<MODULE_PERSISTENCE_DIR>/edgeseg/model_cache`` when mercure offers a persistence folder, else None."""
    env = os.environ if env is None else env
    base = env.get(PERSISTENCE_VARIABLE, "").strip()
    return Path(base) / "edgeseg" / "model_cache" if base else None


def persistence_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """``<MODULE_PERSISTENCE_DIR>/edgeseg`` (model cache, latency table) when mercure offers one, else None."""
    cache = model_cache_dir(env)
    return cache.parent if cache is not None else None


def notification(text: str, requested: bool = False) -> dict[str, Any]:
    """The ``__mercure_notification`` value: ``text`` shown in the rule's notification; ``requested`` asks for one
    on rules that notify only on request."""
    return {"text": text, "requested": requested}
