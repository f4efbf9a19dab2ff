"""The settings schema: one :class:`Key` per setting, the only place a setting's name, type, default, bounds,
allowed values, help text, environment variable and command-line flag are written.

Everything else is derived from :data:`KEYS`: the ``watch_config.yaml`` reader and the environment
(:mod:`~edgeseg.runtime.settings.validate`), the flags of ``segment``, ``watch`` and ``run``
(:mod:`~edgeseg.runtime.settings.flags`), the settings of a one-shot run (mercure's ``process.settings``), the
configuration reference ``docs/configuration.md`` and the example ``watch_config.yaml``
(:mod:`~edgeseg.runtime.settings.reference`).

Defaults are written once. The sections that have their own typed object take their defaults from it
(``limits`` from :class:`~edgeseg.runtime.read.limits.ReadLimits`, ``dicom_listener`` and ``delivery`` from
:mod:`edgeseg.runtime.node.settings`); every other object (``WatchConfig``, ``RunSettings``, ``SegmentOptions``,
``OutputOptions``) takes its defaults from here (:func:`default`). ``tests/runtime/test_settings_schema.py``
checks that the two agree.

Two keys have a second default for the commands that run once (``segment``, ``run``): a watcher runs unattended
and needs a time budget and a ceiling so that one series cannot hold up the queue; a run someone started has none
unless asked for (:attr:`Key.oneshot_default`).
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edgeseg.runtime.infer.devices import SUPPORTED_DEVICES
from edgeseg.runtime.node.settings import (
    DEFAULT_SOP_CLASSES, DEFAULT_TRANSFER_SYNTAXES, DeliverySettings, Destination, ListenerSettings,
)
from edgeseg.runtime.options import OutputOptions, SegmentOptions
from edgeseg.runtime.read.limits import ReadLimits
from edgeseg.runtime.read.selection import SelectionRules
from edgeseg.runtime.settings.enums import DestinationRole, Echoes, ObserverKind, Precision, SegType

#: the commands whose flags are derived from the schema
COMMANDS: Final[tuple[str, ...]] = ("segment", "watch", "run")
#: the commands that run once (their settings: :class:`~edgeseg.runtime.settings.run.RunSettings`)
ONESHOT_COMMANDS: Final[tuple[str, ...]] = ("segment", "run")
ENV_PREFIX: Final = "EDGESEG_"
#: ``bundle: demo`` resolves to the packaged demo bundle
DEMO_BUNDLE_KEYWORD: Final = "demo"
#: what names a model bundle, in every message that asks for one (nothing runs a model nobody named)
BUNDLE_REMEDY: Final = (f"the folder `edgeseg export` wrote (it holds bundle.json), or '{DEMO_BUNDLE_KEYWORD}' for "
                        "the packaged demo model (trained on one case, not for clinical use)")
#: where the watcher keeps its state when neither the file nor the environment nor the command line says
HOME_STATE_DIR: Final = Path.home() / ".edgeseg" / "watch"

#: files that are never series: sidecars, our own outputs, half-written copies, OS litter, DICOMDIR indexes
DEFAULT_EXCLUDE: Final[tuple[str, ...]] = (
    "*.json", "*.txt", "*.md", "*.xml", "*.csv", "*.log", "*.tmp", "*.part", "*.partial", "*.crdownload",
    "~*", "Thumbs.db", "desktop.ini", "DICOMDIR", "LOCKFILE", "VERSION",
)


class Kind(enum.Enum):
    """How a value is written and checked (:func:`edgeseg.runtime.settings.validate.check`)."""

    BOOL = "true or false"
    INT = "whole number"
    FLOAT = "number"
    ENUM = "one of a list"
    DEVICE = "OpenVINO device"
    TEXT = "text"
    NAME = "plain name"
    VARIANT = "bundle variant name"
    AET = "AE title"
    HOST = "address or host name"
    AETS = "list of AE titles"
    HOSTS = "list of addresses, networks or host names"
    UIDS = "list of UIDs"
    ROLES = "list of result roles"
    GLOBS = "list of file-name globs"
    WORDS = "list of words"
    PATHS = "list of folders"
    PATH = "folder"
    FILE = "file"
    BUNDLE = "bundle folder or 'demo'"
    DESTINATIONS = "list of destinations"


class _Same(enum.Enum):
    SAME = "same"


#: :attr:`Key.oneshot_default` / :attr:`Key.example`: as :attr:`Key.default`
SAME: Final = _Same.SAME


@dataclass(frozen=True)
class Key:
    """One setting. ``path``: its key path (``outputs.preview``); ``default``: the one default (None with a
    ``derived`` text: computed from other values at load time); ``help``: one line (flags, reference);
    ``doc``: the longer explanation written above the key in ``watch_config.yaml`` (empty: ``help``)."""

    path: str
    kind: Kind
    default: Any
    help: str
    doc: str = ""
    choices: type[enum.StrEnum] | None = None
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    nullable: bool = False
    #: how a default of None is filled in (``<state_dir>/logs``), for the reference
    derived: str = ""
    #: the command-line flag (``--quiet-period``) and the commands that offer it
    flag: str | None = None
    commands: tuple[str, ...] = ()
    metavar: str | None = None
    #: accepted in a one-shot run's settings (mercure's ``process.settings``)
    oneshot: bool = False
    #: a key of ``watch_config.yaml`` (and EDGESEG_<KEY>)
    watch: bool = True
    #: the default of the commands that run once, where it differs (a watcher needs a budget, a run does not)
    oneshot_default: Any = SAME
    #: the value ``watch_config.yaml`` shows (SAME: the default); ``example_commented``: shown as a comment
    example: Any = SAME
    example_commented: bool = False

    @property
    def env(self) -> str | None:
        """The environment variable (EDGESEG_QUIET_PERIOD_S, EDGESEG_OUTPUTS__PREVIEW); None: not a watcher key."""
        return env_name(self.path) if self.watch else None

    @property
    def section(self) -> str | None:
        """``outputs`` for ``outputs.preview``; None for a top-level key."""
        return self.path.split(".", 1)[0] if "." in self.path else None

    @property
    def name(self) -> str:
        """The key's own name (``preview`` for ``outputs.preview``)."""
        return self.path.rsplit(".", 1)[-1]

    @property
    def shown_flag(self) -> str:
        """How messages name a command-line value: the flag, else one derived from the key path."""
        return self.flag or "--" + self.path.replace("_", "-").replace(".", "-")

    def default_for(self, command: str | None = None) -> Any:
        """The default for ``command`` (None or ``watch``: the watcher's, the file's)."""
        if command in ONESHOT_COMMANDS and self.oneshot_default is not SAME:
            return self.oneshot_default
        return self.default

    def allowed(self) -> str:
        """The allowed values in words (``auto, int8, fp16, fp32``; ``> 0``; ``1 ... 65535``)."""
        if self.choices is not None:
            text = ", ".join(m.value for m in self.choices)
        elif self.kind is Kind.DEVICE:
            text = SUPPORTED_DEVICES
        elif self.minimum is not None or self.maximum is not None:
            low = "" if self.minimum is None else f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
            high = "" if self.maximum is None else f"<= {self.maximum:g}"
            text = " and ".join(t for t in (low, high) if t)
        else:
            text = self.kind.value
        return text + (", or null" if self.nullable else "")


def env_name(key_path: str) -> str:
    """The environment variable that sets ``key_path``: EDGESEG_QUIET_PERIOD_S, EDGESEG_OUTPUTS__PREVIEW."""
    return ENV_PREFIX + key_path.upper().replace(".", "__")


def _field_default(cls: type, name: str) -> Any:
    """The default of a dataclass field: the typed objects that own a section own its defaults."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise AssertionError(f"{cls.__name__}.{name} has no default")  # pragma: no cover


def _out(name: str) -> Any:
    """The default of an ``outputs.*`` key: :class:`~edgeseg.runtime.options.OutputOptions` owns it."""
    return _field_default(OutputOptions, name)


def _run(name: str) -> Any:
    """The default of a key of ``segment`` and ``run``: :class:`~edgeseg.runtime.options.SegmentOptions` owns it."""
    return _field_default(SegmentOptions, name)


_ALL: Final = COMMANDS
_OUT = "Optional results (the label map NIfTI, its labels and the run manifest are always written)."

KEYS_TABLE: Final[tuple[Key, ...]] = (
    Key("roots", Kind.PATHS, (), "folder to watch, recursively (repeatable; replaces roots: of the file)",
        doc="Folders to watch, recursively. Results are written beside each series, inside these folders: "
            "<name>.edgeseg/ (masks, preview, statistics, DICOM-SEG) or <name>.edgeseg-error.json (why it failed). "
            "Required (in the file, EDGESEG_ROOTS or --root).",
        flag="--root", commands=("watch",), metavar="DIR", example=("./incoming",)),
    Key("include", Kind.GLOBS, ("*",), "file-name globs to consider",
        doc="Which files may be series (file-name globs, case-insensitive; a pattern with \"/\" matches the path "
            "relative to the root). DICOM files often have no extension, so the default takes everything ..."),
    Key("exclude", Kind.GLOBS, DEFAULT_EXCLUDE, "file-name globs to ignore (wins over include)",
        doc="... except these (exclude wins). Hidden files and folders (\".name\") and edgeseg's own outputs are "
            "always ignored. Symbolic links (and Windows junctions) below a root are never followed, whatever they "
            "point to: a linked folder or file is not input, and each link is logged once. A root may itself be a "
            "link."),
    Key("observer", Kind.ENUM, ObserverKind.NATIVE, "how new files are noticed: native events or polling "
        "(network shares)", choices=ObserverKind, flag="--observer", commands=("watch",),
        doc="How new files are noticed: \"native\" (operating-system events; local disks) or \"polling\" "
            "(directory snapshots every polling_interval_s; use it for network shares, where native events from "
            "other machines never arrive)."),
    Key("polling_interval_s", Kind.FLOAT, 5.0, "seconds between directory snapshots (observer: polling)",
        minimum=0.0, exclusive_minimum=True, flag="--polling-interval", commands=("watch",), metavar="S"),
    Key("rescan_interval_s", Kind.FLOAT, 300.0, "seconds between safety rescans of the roots (0: off)",
        minimum=0.0,
        doc="Seconds between safety rescans of the roots (catches events the OS dropped). 0 turns it off."),
    Key("quiet_period_s", Kind.FLOAT, 60.0, "seconds without new files before a series counts as complete",
        minimum=0.0, exclusive_minimum=True, flag="--quiet-period", commands=("watch",), metavar="S",
        doc="A series is complete when no new file arrived for this many seconds (and, when its headers announce "
            "an image count, that count arrived; after 3 quiet periods an incomplete series is processed anyway "
            "and the reader decides). 60 s as Orthanc's StableAge and mercure's series_complete_trigger."),
    Key("bundle", Kind.BUNDLE, None, "model bundle folder, or 'demo' for the packaged demo bundle (required)",
        flag="--bundle", commands=("segment", "watch"), example=DEMO_BUNDLE_KEYWORD,
        doc="The model bundle folder (written by `edgeseg export`; it holds bundle.json), or \"demo\" for the small "
            "demo model shipped inside edgeseg (trained on one case: for trying the watcher out, not for clinical "
            "use). Required: nothing runs a model nobody named. `edgeseg run` finds its bundle itself: --bundle, "
            "EDGESEG_BUNDLE, a MONAI application package's model folder; it runs the demo only when named 'demo'."),
    Key("variant", Kind.VARIANT, _run("variant"),
        "bundle variant (null: the most accurate, or the time-budget planner's "
        "choice)", nullable=True, flag="--variant", commands=("segment", "run"), oneshot=True, watch=False),
    Key("device", Kind.DEVICE, _run("device"), "OpenVINO device", flag="--device", commands=_ALL, oneshot=True,
        doc=f"OpenVINO device: {SUPPORTED_DEVICES}; not NPU, HETERO or MULTI. `edgeseg doctor` lists this PC's. "
            "mercure's hardened mode passes no GPU into the container."),
    Key("threads", Kind.INT, _run("threads"), "CPU inference threads (null: OpenVINO uses every core)", minimum=1,
        nullable=True, flag="--threads", commands=_ALL, metavar="N", oneshot=True),
    Key("precision", Kind.ENUM, _run("precision"), "model precision: auto (the fastest the device compiles among "
        "FP32 and the precisions export's fidelity gate passed, recorded in each result's manifest), int8, fp16 or "
        "fp32 (exact parity); one the gate failed or never checked runs only when named, with a warning",
        choices=Precision, flag="--precision",
        commands=_ALL, oneshot=True),
    Key("time_budget_s", Kind.FLOAT, 120.0, "seconds one series may take: the most accurate plan predicted to fit "
        "(null: always the most accurate)", minimum=0.0, exclusive_minimum=True, nullable=True,
        flag="--time-budget", commands=_ALL, metavar="S", oneshot=True,
        oneshot_default=_run("time_budget_s"),
        doc="Seconds one series may take. Before each series the planner predicts the time of each variant and "
            "tile step from latencies measured on this PC (cached in state_dir) and picks the most accurate one "
            "that fits; if none fits it runs the fastest and says so in the log. null: always the most accurate "
            "(within time_ceiling_s). The prediction includes reading the files and writing the results (learnt "
            "per DICOM instance on this PC). `segment` and `run` have no budget unless given one."),
    Key("time_ceiling_s", Kind.FLOAT, 900.0, "hard limit of seconds per series: refused when even the fastest "
        "plan is predicted above it, cancelled when it runs past it (null: none)", minimum=0.0,
        exclusive_minimum=True, nullable=True, flag="--time-ceiling", commands=("watch", "run"), metavar="S",
        oneshot=True, oneshot_default=None,
        derived="the watcher's: 900, or 3 x time_budget_s when that is larger",
        doc="Hard limit of seconds per series (at least time_budget_s). A series whose fastest plan is predicted "
            "above it is refused before it starts; one still running after it is cancelled at its next progress "
            "report. Either way it gets an error file and is not retried until its files change. Default 900 "
            "(15 min: a series that takes longer holds up every series queued behind it), or 3 x time_budget_s "
            "when that is larger. null: no ceiling. `run` has no ceiling unless given one."),
    Key("warm_up", Kind.BOOL, True, "before the first series, segment the MRI shipped with edgeseg (results "
        "dropped): once unrecorded where cheap, so that the first series does not pay the process's one-off costs, "
        "then, where this PC has run no series of the bundle, as NIfTI and DICOM, so that the planner predicts from "
        "this PC's measured costs", flag="--no-warm-up", commands=("watch",),
        doc="Before its first series the watcher segments the MRI shipped with edgeseg, with the outputs set here, "
            "in a hidden folder in state_dir that it removes. First, where the planner predicts that at most 2 s "
            "beyond compiling (the demo model: 0.45 s), it primes the process with the NIfTI, not recorded: what a "
            "new process pays once (kernels compiled on first use, thread pools, imports: 0.05-0.12 s, 11-27 % of a "
            "small series with the demo model) is then not the first real series'. Then, on a PC that has run no "
            "series of the bundle yet (with this device and threads), it segments it as NIfTI and as a DICOM "
            "series: the time-budget planner then predicts the first real series from this PC's measured costs "
            "instead of its guesses, and the engines are compiled before it arrives. A few seconds with the demo "
            "model; about as long as two small series with a TotalSegmentator-sized one (not primed). Only where a "
            "series is planned (time_budget_s or time_ceiling_s), not with --once nor in `edgeseg demo`. false: "
            "the first series is planned from the guesses and pays those costs (docs/benchmarks.md)."),
    Key("limits.max_voxels", Kind.INT, _field_default(ReadLimits, "max_voxels"), "voxels a series may hold",
        minimum=1,
        doc="2^30 = 1024 x 1024 x 1024 voxels: beyond the largest MRI series in practice (clinical 3-D: 1-100 M "
            "voxels); read as float32 it is already 4 GB before any processing."),
    Key("limits.max_decompressed_mb", Kind.FLOAT, _field_default(ReadLimits, "max_decompressed_mb"),
        "MB of image data a (compressed) file may unpack to", minimum=0.0, exclusive_minimum=True,
        doc="MB of image data a (compressed) NIfTI may unpack to: 2^30 voxels of 8-byte values. Unpacking stops "
            "there."),
    Key("limits.max_frames", Kind.INT, _field_default(ReadLimits, "max_frames"),
        "images (slices, frames) a DICOM series may hold", minimum=1,
        doc="Images (slices, frames) in one DICOM series: a 3-D series has a few thousand at most, 4-D "
            "multi-frame acquisitions (diffusion, perfusion) about 10000."),
    Key("outputs.per_structure", Kind.BOOL, _out("per_structure"), "also one NIfTI mask per structure",
        flag="--per-structure",
        commands=("segment", "watch")),
    Key("outputs.dicom_seg", Kind.BOOL, _out("dicom_seg"), "a DICOM-SEG object (DICOM input only)",
        flag="--no-dicom-seg",
        commands=_ALL, oneshot=True),
    Key("outputs.seg_type", Kind.ENUM, _out("seg_type"), "DICOM-SEG type: binary (one frame per structure and slice, "
        "stored by every SEG-capable PACS) or labelmap (one frame per slice, small; a 2024 SOP class many PACS refuse)",
        choices=SegType, flag="--seg-type", commands=_ALL, oneshot=True,
        doc="DICOM-SEG type: binary (one 1-bit frame per structure and slice: thousands of frames for 50 structures, "
            "but stored by every SEG-capable PACS and read by every SEG viewer; what TotalSegmentator, MONAI Deploy "
            "and mercure write) or labelmap (one frame per slice: 300 frames for a 300-slice series, whatever the "
            "number of structures; Label Map Segmentation Storage, a 2024 SOP class that Orthanc 1.10, DCMTK 3.6.7 "
            "and pydicom-seg refuse). The watcher does not start when a destination it reaches refuses the type "
            "set here (docs/dicom-node.md)."),
    Key("outputs.dicom_sr", Kind.BOOL, _out("dicom_sr"),
        "a DICOM SR measurement report (TID 1500: volume per structure) "
        "referencing the DICOM-SEG and the source series (DICOM input, beside a DICOM-SEG)", flag="--no-dicom-sr",
        commands=_ALL, oneshot=True),
    Key("outputs.statistics", Kind.BOOL, _out("statistics"),
        "volume and mean intensity per structure (statistics.json, CSV)",
        flag="--no-statistics", commands=_ALL, oneshot=True),
    Key("outputs.preview", Kind.BOOL, _out("preview"), "a PNG overview", flag="--no-preview", commands=_ALL,
        oneshot=True),
    Key("echoes", Kind.ENUM, Echoes.ALL, "of a series holding several 3-D stacks at the same positions (echoes, "
        "Dixon in/opposed phase, time points): segment all (each its own result), the first, or the magnitude "
        "stacks only (the selection rules' multi-volume rule)", choices=Echoes,
        flag="--echoes", commands=_ALL, oneshot=True,
        doc="A series holding several 3-D stacks at the same slice positions (two echoes, Dixon in/opposed phase "
            "or water/fat in one series, time points of a dynamic series) is split by EchoNumbers/EchoTime, "
            "ImageType and temporal position (per frame for enhanced images), as dcm2niix splits it: \"all\" "
            "segments each stack (its own result and error file, named ..._echo1, ..._echo2, ..._IN_PHASE, "
            "..._t3); \"first\" only the first (lowest echo number or echo time, earliest time point); "
            "\"magnitude\" only the stacks whose ImageType says magnitude (M, MAGNITUDE). The selection rules "
            "(selection:) apply first: stacks whose ImageType they exclude (the phase stack) are never segmented, "
            "and a series of more than selection.max_volumes stacks is skipped as a time series."),
    Key("selection.enabled", Kind.BOOL, _field_default(SelectionRules, "enabled"), "apply the selection rules "
        "(false: every image series is segmented)", oneshot=True),
    Key("selection.modalities", Kind.WORDS, _field_default(SelectionRules, "modalities"), "the Modality values "
        "segmented (empty: any)", oneshot=True),
    Key("selection.secondary_capture", Kind.BOOL, _field_default(SelectionRules, "secondary_capture"), "segment "
        "Secondary Capture images (screen captures, report pages) too", oneshot=True),
    Key("selection.exclude_image_types", Kind.WORDS, _field_default(SelectionRules, "exclude_image_types"),
        "ImageType values that are skipped: phase, field maps, diffusion and its maps, localizers, perfusion, "
        "projections", oneshot=True, example_commented=True,
        doc="ImageType (enhanced: FrameType) values that are skipped. A series whose every image carries one is "
            "skipped; of a series holding several 3-D stacks, the stacks that carry one are (the phase stack of a "
            "magnitude/phase series). A diffusion b-value in the headers counts as DIFFUSION. The default: not "
            "magnitude (P, PHASE, R, I ...), field maps (B0, FIELD_MAP, B1 ...), diffusion and its maps, localizers, "
            "perfusion, parametric maps, projections, subtractions, screen saves (the commented line below). Writing "
            "the key replaces the whole list."),
    Key("selection.require_image_types", Kind.WORDS, _field_default(SelectionRules, "require_image_types"),
        "ImageType values every segmented image must carry, e.g. [ORIGINAL] (empty: none required)", oneshot=True),
    Key("selection.exclude_descriptions", Kind.GLOBS, _field_default(SelectionRules, "exclude_descriptions"),
        "SeriesDescription / ProtocolName globs (case-insensitive) that are skipped: localizers, surveys, DTI/DWI, "
        "BOLD, perfusion, field maps", oneshot=True, example_commented=True,
        doc="SeriesDescription or ProtocolName globs (case-insensitive, * and ?) of series that are skipped, for "
            "the series whose ImageType does not say what they are (a Philips survey, a GE BOLD run). The default "
            "(the commented line below): localizers, scouts and surveys, DTI/DWI, BOLD/fMRI, perfusion and ASL, "
            "field maps. Writing the key replaces the whole list."),
    Key("selection.include_descriptions", Kind.GLOBS, _field_default(SelectionRules, "include_descriptions"),
        "when given, only series whose SeriesDescription or ProtocolName matches one of these globs", oneshot=True),
    Key("selection.min_slices", Kind.INT, _field_default(SelectionRules, "min_slices"), "series (or stacks) with "
        "fewer slice positions are skipped (localizers, single slices)", minimum=1, oneshot=True),
    Key("selection.max_volumes", Kind.INT, _field_default(SelectionRules, "max_volumes"), "a series holding more "
        "3-D volumes at the same positions is a time series (BOLD, perfusion, DTI) and skipped", minimum=1,
        oneshot=True),
    Key("retention.received_days", Kind.FLOAT, 14.0, "days after its result was delivered that a series the DICOM "
        "listener received is removed (null: kept)", minimum=0.0, nullable=True,
        doc="Days after the series' result was delivered (every destination confirmed it; with no destinations: "
            "written) that the images the DICOM listener received (its root) are removed. A series whose result is "
            "not delivered, a series not yet segmented, failed or partial, is never removed. null: kept."),
    Key("retention.results_days", Kind.FLOAT, 30.0, "days after delivery that a result folder (<name>.edgeseg/) is "
        "removed (null: kept)", minimum=0.0, nullable=True,
        doc="Days after delivery that a series' result folder (<name>.edgeseg/) is removed, in the listener's root "
            "and in watched export folders alike (it is edgeseg's). The job store remembers the series, so it is "
            "not segmented again while its images are unchanged. null: kept."),
    Key("retention.min_free_mb", Kind.FLOAT, 2000.0, "free MB the disks of the roots should keep: below it, "
        "delivered series are removed oldest-delivered first (null: no watermark)", minimum=0.0, nullable=True,
        doc="Free-space watermark (MB) for the disks of the roots, above dicom_listener.min_free_mb (where the "
            "listener starts refusing images): below it, delivered series (results, received images, and export "
            "folders' images only with export_folders) are removed oldest-delivered first until it is met, "
            "whatever their age. Never an undelivered result or an unprocessed series: when that is not enough, "
            "a warning says so. null: no watermark."),
    Key("retention.export_folders", Kind.BOOL, False, "also remove the images of delivered series in watched "
        "export folders (the console's files): only when true",
        doc="Images in the watched export folders belong to the console, not to edgeseg: they are removed (by "
            "received_days and the watermark, like received images) only when this is true."),
    Key("retention.interval_s", Kind.FLOAT, 600.0, "seconds between two checks of the retention policy",
        minimum=0.0, exclusive_minimum=True),
    Key("state_dir", Kind.PATH, None, "job store (SQLite, on a local disk), latency table and model cache",
        flag="--state-dir", commands=("watch",), metavar="DIR", example="./edgeseg-state",
        derived="edgeseg-state beside the configuration file, else ~/.edgeseg/watch"),
    Key("log_dir", Kind.PATH, None, "log files (watch.log, rotated at 10 MB, 5 kept)", nullable=True,
        flag="--log-dir", commands=("watch",), metavar="DIR", example="./edgeseg-state/logs",
        derived="<state_dir>/logs"),
    Key("max_concurrent_series", Kind.INT, 1, "series segmented at the same time (1 is right for most PCs: one "
        "series already uses every core)", minimum=1, flag="--max-concurrent", commands=("watch",), metavar="N"),
    Key("max_attempts", Kind.INT, 3, "attempts before a failing series is given up", minimum=1,
        doc="Attempts before a failing series is given up (also counts watcher crashes while segmenting it). A "
            "series that was given up runs again when its files change."),
    Key("stop_grace_s", Kind.FLOAT, 30.0, "seconds a running series may finish after a stop request", minimum=0.0,
        doc="Seconds a running series may finish after a stop request (Ctrl+C, SIGTERM); then it is cancelled and "
            "runs again at the next start."),
    # the DICOM node (runtime/node): a Storage SCP writing into a watched root, destinations for the results
    Key("dicom_listener.enabled", Kind.BOOL, _field_default(ListenerSettings, "enabled"),
        "receive images by DICOM C-STORE (false: no port is opened at all)"),
    Key("dicom_listener.ae_title", Kind.AET, _field_default(ListenerSettings, "ae_title"),
        "the AE title consoles send to (their \"DICOM node\" entry for this PC: AE title, address, port)"),
    Key("dicom_listener.port", Kind.INT, _field_default(ListenerSettings, "port"), "TCP port of the listener",
        minimum=1, maximum=65535),
    Key("dicom_listener.bind_address", Kind.TEXT, _field_default(ListenerSettings, "bind_address"),
        "address to listen on (0.0.0.0: every interface; one address of this PC: that network only)"),
    Key("dicom_listener.allowed_ae_titles", Kind.AETS, _field_default(ListenerSettings, "allowed_ae_titles"),
        "calling AE titles allowed to store (empty: any from an allowed host)",
        doc="Who may store. Every other peer is refused at association (A-ASSOCIATE-RJ) and the refusal is logged; "
            "nothing from it reaches the folder. With both lists set, a peer must match both. An enabled listener "
            "needs at least one. Calling AE titles allowed to store (empty: any from an allowed host), e.g. "
            "[MRC25123, MR_CONSOLE]."),
    Key("dicom_listener.allowed_hosts", Kind.HOSTS, _field_default(ListenerSettings, "allowed_hosts"),
        "peer addresses, networks (10.1.2.0/24) or host names allowed to store (empty: any host with an allowed AE "
        "title)"),
    Key("dicom_listener.max_associations", Kind.INT, _field_default(ListenerSettings, "max_associations"),
        "associations served at the same time (more are refused as 'local limit exceeded' and the console "
        "retries)", minimum=1),
    Key("dicom_listener.max_associations_per_host", Kind.INT,
        _field_default(ListenerSettings, "max_associations_per_host"),
        "connections one peer address may hold at the same time (more are closed at accept, before anything is "
        "read): a stranger or a broken console cannot take every slot", minimum=1,
        doc="Connections (TLS handshakes and associations) one peer address may hold at the same time. More are "
            "closed as they are accepted, before any byte is read, and logged once with the address: a host that "
            "opens idle sockets or floods the port cannot take the slots (max_associations) of the consoles. A "
            "console normally uses one association; some send with two or three in parallel."),
    Key("dicom_listener.root", Kind.PATH, None, "the watched root received instances are written into, as "
        "<StudyInstanceUID>/<SeriesInstanceUID>/<SOP>.dcm (null: the first of roots)", nullable=True,
        derived="the first of roots",
        doc="The watched root received instances are written into, as <StudyInstanceUID>/<SeriesInstanceUID>/"
            "<SOP>.dcm (null: the first of roots). Each instance is fsync'ed under its final name before the "
            "console hears \"success\"."),
    Key("dicom_listener.completion_grace_s", Kind.FLOAT, _field_default(ListenerSettings, "completion_grace_s"),
        "seconds after the association that sent a series ended before it counts as complete", minimum=0.0,
        doc="A series whose sending association ended counts as complete this many seconds later (instead of "
            "quiet_period_s), unless another association is still sending into it or the headers announce more "
            "images."),
    Key("dicom_listener.min_free_mb", Kind.FLOAT, _field_default(ListenerSettings, "min_free_mb"),
        "free MB the root must keep; below it stores are refused as 'out of resources' (0xA700) and the console "
        "keeps the images and retries", minimum=0.0),
    Key("dicom_listener.sop_classes", Kind.UIDS, DEFAULT_SOP_CLASSES, "storage SOP classes accepted",
        example=DEFAULT_SOP_CLASSES[:2], example_commented=True,
        doc="What is accepted (UIDs). The defaults: MR, enhanced and legacy-converted MR, CT and enhanced CT, "
            "secondary capture, presentation states, raw data, SR and PDF (stored beside the series; only images "
            "are segmented). Leave it out unless a console needs something else."),
    Key("dicom_listener.transfer_syntaxes", Kind.UIDS, DEFAULT_TRANSFER_SYNTAXES, "transfer syntaxes accepted",
        example=DEFAULT_TRANSFER_SYNTAXES[:2], example_commented=True,
        doc="The defaults: the uncompressed transfer syntaxes and the compressed ones edgeseg decodes (JPEG "
            "Lossless, JPEG-LS, JPEG 2000, JPEG baseline, RLE). Leave it out unless a console needs something "
            "else."),
    Key("dicom_listener.tls_certificate", Kind.FILE, None, "DICOM TLS: the listener's certificate (PEM; null: "
        "plain DICOM)", nullable=True),
    Key("dicom_listener.tls_key", Kind.FILE, None, "DICOM TLS: the certificate's private key (PEM)", nullable=True),
    Key("dicom_listener.tls_ca", Kind.FILE, None, "DICOM TLS: CA certificates that peers' certificates must chain "
        "to (PEM)", nullable=True),
    Key("dicom_listener.tls_require_peer_certificate", Kind.BOOL, False, "DICOM TLS: consoles must present a "
        "certificate signed by tls_ca (mutual TLS)"),
    Key("destinations", Kind.DESTINATIONS, (), "DICOM nodes the results are sent to (a PACS, the console)",
        doc="Where results are sent (each a DICOM node: a PACS, the console). Each entry: name (for logs and "
            "`edgeseg status`), ae_title, host, port, send ([seg, sr]: the DICOM-SEG and/or the TID 1500 SR "
            "measurement report), optionally calling_ae_title (ours towards it; default the listener's ae_title), "
            "timeout_s, tls_certificate/tls_key/tls_ca. Every result to send is recorded in the job store before "
            "the first try and survives restarts. Example:\n"
            "  - name: pacs\n    ae_title: ORTHANC\n    host: 10.20.1.5\n    port: 4242\n    send: [seg, sr]"),
    Key("delivery.retry_initial_s", Kind.FLOAT, _field_default(DeliverySettings, "retry_initial_s"),
        "seconds before the first retry of a delivery (doubled at each failure)", minimum=0.0,
        exclusive_minimum=True),
    Key("delivery.retry_max_s", Kind.FLOAT, _field_default(DeliverySettings, "retry_max_s"),
        "longest wait between delivery retries", minimum=0.0, exclusive_minimum=True),
    Key("delivery.max_age_h", Kind.FLOAT, _field_default(DeliverySettings, "max_age_h"), "hours after which an "
        "undelivered result (or one refused for good, e.g. our AE title unknown to the PACS) is reported as failed "
        "(`edgeseg status`)", minimum=0.0, exclusive_minimum=True),
    # the status page (runtime/watch/status_page.py) and the alerts webhook (runtime/watch/alerts.py)
    Key("status_page.enabled", Kind.BOOL, False, "serve a read-only status page, /api/status, /healthz and "
        "/metrics over HTTP while the watcher runs",
        doc="A read-only web page of the watcher (queue, running series, recent results with their preview, "
            "deliveries, failures and their remedy, free disk space) at http://<bind_address>:<port>/, the same "
            "data as JSON at /api/status, /healthz for service monitors (200 while the watcher's threads live and "
            "its heartbeat is fresh, else 503) and Prometheus metrics at /metrics. Off unless enabled. It shows "
            "patient IDs: bind it to another address than 127.0.0.1 only with a token, and with the listener's "
            "TLS certificate (dicom_listener.tls_certificate/tls_key, reused here) on an untrusted network."),
    Key("status_page.bind_address", Kind.TEXT, "127.0.0.1", "address the status page listens on (127.0.0.1: this "
        "PC only; any other address needs a token)"),
    Key("status_page.port", Kind.INT, 8480, "TCP port of the status page (0: any free port, logged at start)",
        minimum=0, maximum=65535),
    Key("status_page.token", Kind.TEXT, None, "the secret a browser or monitor must present (?token=, a Bearer "
        "header or the cookie the page sets); required for any bind address but 127.0.0.1", nullable=True),
    Key("alerts.webhook_url", Kind.TEXT, None, "http(s) URL that gets a JSON POST when a series fails for good, a "
        "delivery is given up or free disk space falls below alerts.disk_min_free_mb (null: no alerts)",
        nullable=True,
        doc="Alerts: a JSON POST ({\"site\", \"event\", \"subject\", \"message\", \"remedy\", \"at\", ...}) to this "
            "URL when a series is given up (failed for good), a delivery is given up, or free disk space of a "
            "watched root or the state folder falls below disk_min_free_mb. Alerts wait in the job store and are "
            "retried until max_age_h; nothing else is contacted (no proxy, no redirect is followed). null: off."),
    Key("alerts.site", Kind.TEXT, None, "this site's name in every alert (null: the PC's host name)",
        nullable=True, derived="the PC's host name"),
    Key("alerts.disk_min_free_mb", Kind.FLOAT, 2048.0, "free MB below which a disk-space alert is sent (once, "
        "again after space recovered)", minimum=0.0),
    Key("alerts.max_age_h", Kind.FLOAT, 24.0, "hours an alert is retried before it is dropped (logged)",
        minimum=0.0, exclusive_minimum=True),
)

#: every key by key path, in the table's order
KEYS: Final[dict[str, Key]] = {k.path: k for k in KEYS_TABLE}
#: the keys of ``watch_config.yaml`` (and of EDGESEG_<KEY>)
WATCH_KEYS: Final[dict[str, Key]] = {p: k for p, k in KEYS.items() if k.watch}
#: the keys a one-shot run accepts in its engine's settings (mercure's ``process.settings``)
ONESHOT_KEYS: Final[dict[str, Key]] = {p: k for p, k in KEYS.items() if k.oneshot}

#: the keys of one ``destinations`` entry, checked by the same rules (key paths ``destinations[<i>].<key>``)
DESTINATION_KEYS: Final[dict[str, Key]] = {k.path: k for k in (
    Key("name", Kind.NAME, None, "the destination's name in logs and `edgeseg status` (letters, digits, _ . -)"),
    Key("ae_title", Kind.AET, None, "the peer's AE title"),
    Key("host", Kind.HOST, None, "the peer's IP address or host name"),
    Key("port", Kind.INT, None, "the peer's port", minimum=1, maximum=65535),
    Key("send", Kind.ROLES, _field_default(Destination, "send"), "what to send: seg (the DICOM-SEG) and/or sr "
        "(the TID 1500 measurement report)", choices=DestinationRole),
    Key("calling_ae_title", Kind.AET, None, "our AE title towards it (null: the listener's ae_title)",
        nullable=True),
    Key("timeout_s", Kind.FLOAT, _field_default(Destination, "timeout_s"), "seconds to wait for the peer at each "
        "step", minimum=0.0, exclusive_minimum=True),
    Key("tls_certificate", Kind.FILE, None, "DICOM TLS: our certificate (PEM)", nullable=True),
    Key("tls_key", Kind.FILE, None, "DICOM TLS: its private key (PEM)", nullable=True),
    Key("tls_ca", Kind.FILE, None, "DICOM TLS: CA certificates the peer's certificate must chain to (PEM)",
        nullable=True),
)}
#: the keys a destination must have
DESTINATION_REQUIRED: Final[tuple[str, ...]] = ("name", "ae_title", "host", "port")

#: one paragraph per section, above it in ``watch_config.yaml`` and in the reference
SECTION_DOCS: Final[dict[str, str]] = {
    "limits": "What a series' headers may promise. A header is only a promise: a 31 MB .nii.gz can unpack to "
              "30 GB, a 400-byte header can announce 65535 x 65535 pixels. Beyond these limits a series is refused "
              "before its pixels are read (error file, kind \"too_large\", not retried). Raise them only for "
              "genuine images this PC has the memory for.",
    "outputs": _OUT,
    "dicom_listener": "The DICOM node. Consoles push images by C-STORE to a configured node (AE title, host, "
                      "port); results go back to PACS (or the console) as DICOM. Both are off unless configured "
                      "here. The export folder stays the hand-off point: the listener only writes into a watched "
                      "root, and folder watching works on its own beside it.",
    "selection": "Which DICOM series are segmented (NIfTI and PAR/REC files always are). By default anatomical "
                 "magnitude images of Modality MR; the rest is skipped by rule: not an error and no error file, "
                 "logged once with the rule that matched (\"series skipped by rule: ... rule=selection.<key>\") and "
                 "counted as skipped. The rules are tried in this order: modalities, secondary_capture, "
                 "exclude_image_types, require_image_types, exclude/include_descriptions, min_slices, max_volumes; "
                 "then echoes picks the stacks of a multi-volume series. `edgeseg segment` and `edgeseg run` apply "
                 "the same rules as the watcher.",
    "retention": "What is removed, and when: received images and results, by age after successful delivery and by "
                 "a free-space watermark (oldest delivered first). Undelivered results and series not processed "
                 "are never removed; the console's files in watched export folders only with export_folders: true. "
                 "Each removal is recorded in the job store (SeriesInstanceUID, what, why, counts; no names). "
                 "`edgeseg doctor` shows the policy and the disk forecast.",
    "status_page": "The watcher's read-only status page (off unless enabled): for people (the page) and for "
                   "monitors (/healthz, /metrics). TLS, when the DICOM listener has a certificate, is the "
                   "listener's.",
    "alerts": "A webhook for what nobody watching a console would notice: series given up, deliveries given up, a "
              "disk filling up. Configured per site; off unless webhook_url is set.",
    "delivery": "Retries of deliveries: the first after retry_initial_s, doubled up to retry_max_s; a delivery not "
                "accepted within max_age_h (or refused for good) is reported as failed.",
}


def key(path: str) -> Key:
    """The key at ``path`` (KeyError for an unknown one)."""
    return KEYS[path]


def default(path: str, command: str | None = None) -> Any:
    """The one default of ``path`` (for ``command``: see :meth:`Key.default_for`)."""
    return KEYS[path].default_for(command)


def keys_for(command: str) -> dict[str, Key]:
    """The keys whose flags ``command`` (``segment``, ``watch``, ``run``) offers, in the table's order."""
    return {p: k for p, k in KEYS.items() if command in k.commands}


def sections(keys: dict[str, Key]) -> dict[str, list[str]]:
    """Section -> the names of its keys (``{"outputs": ["per_structure", ...]}``)."""
    out: dict[str, list[str]] = {}
    for k in keys.values():
        if k.section is not None:
            out.setdefault(k.section, []).append(k.name)
    return out
