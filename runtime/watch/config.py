"""``watch_config.yaml``: the watcher's one typed configuration object and its one loader.

The file is read with ``yaml.safe_load`` into a frozen, validated :class:`WatchConfig`. Layers, strongest first::

    command line  >  environment (EDGESEG_<KEY>, dots as "__": EDGESEG_OUTPUTS__PREVIEW)  >  file  >  defaults

Every unknown key, wrong type or missing input path fails at start with a :class:`~edgeseg.errors.ConfigError`
naming the key path, where the value came from, and the fix (``outputs.preveiw: unknown key; did you mean
preview?``). Relative paths in the file are resolved against the file's folder; relative paths from the
environment or the command line against the current folder. ``bundle: demo`` means the packaged demo bundle.
"""
from __future__ import annotations

import difflib
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import edgeseg.demo
from edgeseg.errors import ConfigError
from edgeseg.runtime.infer.devices import SUPPORTED_DEVICES, device_problem, normalize_device
from edgeseg.runtime.infer.engine import PRECISIONS
from edgeseg.runtime.node.settings import (
    DEFAULT_SOP_CLASSES, DEFAULT_TRANSFER_SYNTAXES, DeliverySettings, ListenerSettings, NodeSettings, TlsSettings,
    ae_title_problem, host_problem, is_valid_uid, parse_destinations,
)
from edgeseg.runtime.options import SEG_TYPES, OutputOptions, SegmentOptions
from edgeseg.runtime.read.headers import ECHOES
from edgeseg.runtime.read.limits import ReadLimits

#: ``bundle: demo`` resolves to this folder inside the installed package
DEMO_BUNDLE_KEYWORD = "demo"
ENV_PREFIX = "EDGESEG_"

#: files that are never series: sidecars, our own outputs, half-written copies, OS litter, DICOMDIR indexes
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "*.json", "*.txt", "*.md", "*.xml", "*.csv", "*.log", "*.tmp", "*.part", "*.partial", "*.crdownload",
    "~*", "Thumbs.db", "desktop.ini", "DICOMDIR", "LOCKFILE", "VERSION",
)


class ObserverKind(str, enum.Enum):
    """How file-system changes are noticed. ``native``: OS notifications (inotify, ReadDirectoryChangesW, FSEvents);
    ``polling``: periodic directory snapshots, the only kind that sees changes made on network shares by another
    machine."""

    NATIVE = "native"
    POLLING = "polling"


@dataclass(frozen=True)
class WatchConfig:
    """The validated watcher configuration. Paths are absolute; durations are seconds."""

    roots: tuple[Path, ...]
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    observer: ObserverKind = ObserverKind.NATIVE
    polling_interval_s: float = 5.0
    rescan_interval_s: float = 300.0
    quiet_period_s: float = 60.0
    bundle: Path = Path(DEMO_BUNDLE_KEYWORD)
    device: str = "CPU"
    threads: int | None = None
    precision: str = "auto"
    time_budget_s: float | None = 120.0
    #: hard limit per series: refused up front when even the fastest plan cannot fit, cancelled when run past it
    time_ceiling_s: float | None = 900.0
    outputs: OutputOptions = field(default_factory=OutputOptions)
    #: the 3-D stacks of a series that holds several (echoes, image types, time points) to segment: "all" or "first"
    echoes: str = "all"
    #: what a series' headers may promise (voxels, decompressed bytes, frames); beyond: refused, not retried
    limits: ReadLimits = field(default_factory=ReadLimits)
    state_dir: Path = Path.home() / ".edgeseg" / "watch"
    log_dir: Path = Path.home() / ".edgeseg" / "watch" / "logs"
    max_concurrent_series: int = 1
    max_attempts: int = 3
    stop_grace_s: float = 30.0
    #: the DICOM node: listener (off by default), destinations and delivery retries
    node: NodeSettings = field(default_factory=NodeSettings)
    #: the file this configuration was read from (None: defaults, environment and command line only)
    source: Path | None = None

    @property
    def log_file(self) -> Path:
        """The rotated log file of the watcher."""
        return self.log_dir / "watch.log"

    @property
    def store_path(self) -> Path:
        """The SQLite job store."""
        return self.state_dir / "jobs.sqlite3"

    @property
    def latency_path(self) -> Path:
        """The per-tile latency table measured on this machine."""
        return self.state_dir / "latency.json"

    def segment_options(self, variant: str | None = None, tile_step_size: float | None = None) -> SegmentOptions:
        """The :class:`~edgeseg.runtime.options.SegmentOptions` every series is segmented with.

        ``variant`` and ``tile_step_size`` come from the time-budget planner.
        """
        return SegmentOptions(device=self.device, precision=self.precision, variant=variant, threads=self.threads,
                              cache_dir=self.state_dir / "model_cache", time_budget_s=self.time_budget_s,
                              tile_step_size=tile_step_size, outputs=self.outputs, limits=self.limits)


# --------------------------------------------------------------------------------------------------------------
# the key table: one entry per key path, with its type check and documentation


@dataclass(frozen=True)
class _Key:
    path: str
    # "paths", "path", "file", "bundle", "globs", "float", "int", "bool", "enum", "device", "text", "aet", "aets",
    # "hosts", "uids", "destinations"
    kind: str
    default: Any
    help: str
    minimum: float | None = None
    nullable: bool = False
    choices: tuple[str, ...] = ()
    exclusive_minimum: bool = False
    maximum: float | None = None


_KEYS: tuple[_Key, ...] = (
    _Key("roots", "paths", (), "folders to watch (recursively)"),
    _Key("include", "globs", ("*",), "file-name globs to consider"),
    _Key("exclude", "globs", DEFAULT_EXCLUDE, "file-name globs to ignore (wins over include)"),
    _Key("observer", "enum", "native", "how changes are noticed", choices=tuple(k.value for k in ObserverKind)),
    _Key("polling_interval_s", "float", 5.0, "seconds between directory snapshots (observer: polling)",
         minimum=0.0, exclusive_minimum=True),
    _Key("rescan_interval_s", "float", 300.0, "seconds between safety rescans of the roots (0: off)", minimum=0.0),
    _Key("quiet_period_s", "float", 60.0, "a series is complete when no instance arrived for this long",
         minimum=0.0, exclusive_minimum=True),
    _Key("bundle", "bundle", DEMO_BUNDLE_KEYWORD, "model bundle folder, or 'demo' for the packaged demo bundle"),
    _Key("device", "device", "CPU", f"OpenVINO device: {SUPPORTED_DEVICES}"),
    _Key("threads", "int", None, "inference threads (null: OpenVINO decides)", minimum=1, nullable=True),
    _Key("precision", "enum", "auto", "model precision", choices=PRECISIONS),
    _Key("time_budget_s", "float", 120.0, "seconds one series may take (null: always most accurate)",
         minimum=0.0, exclusive_minimum=True, nullable=True),
    _Key("time_ceiling_s", "float", 900.0, "hard limit of seconds per series: refused when even the fastest plan "
         "is predicted to exceed it, cancelled when it runs past it (default 900, or 3 x time_budget_s when "
         "larger; null: none)", minimum=0.0,
         exclusive_minimum=True, nullable=True),
    _Key("limits.max_voxels", "int", ReadLimits.max_voxels, "voxels a series may hold", minimum=1),
    _Key("limits.max_decompressed_mb", "float", ReadLimits.max_decompressed_mb,
         "MB of image data a (compressed) file may unpack to", minimum=0.0, exclusive_minimum=True),
    _Key("limits.max_frames", "int", ReadLimits.max_frames, "images (slices, frames) a DICOM series may hold",
         minimum=1),
    _Key("outputs.per_structure", "bool", False, "one NIfTI mask per structure"),
    _Key("outputs.dicom_seg", "bool", True, "a DICOM-SEG object (DICOM input only)"),
    _Key("outputs.dicom_sr", "bool", True, "a DICOM SR measurement report (TID 1500: volume per structure) "
         "referencing the DICOM-SEG and the source series (DICOM input, beside a DICOM-SEG)"),
    _Key("outputs.seg_type", "enum", OutputOptions.seg_type, "DICOM-SEG type: labelmap (one frame per slice) or "
         "binary (one frame per structure and slice)", choices=SEG_TYPES),
    _Key("outputs.statistics", "bool", True, "volume and intensity per structure (JSON, CSV)"),
    _Key("outputs.preview", "bool", True, "a PNG overview"),
    _Key("echoes", "enum", "all", "the 3-D stacks of a series that holds several at the same positions (echoes, "
         "Dixon in/opposed phase, time points) to segment: all (each its own result) or first", choices=ECHOES),
    _Key("state_dir", "path", None, "job store, latency table and model cache"),
    _Key("log_dir", "path", None, "rotated log files (default: <state_dir>/logs)", nullable=True),
    _Key("max_concurrent_series", "int", 1, "series segmented at the same time", minimum=1),
    _Key("max_attempts", "int", 3, "attempts before a failing series is given up", minimum=1),
    _Key("stop_grace_s", "float", 30.0, "seconds a running series may finish after a stop request", minimum=0.0),
    # the DICOM node (runtime/node): a Storage SCP writing into a watched root, destinations for the results
    _Key("dicom_listener.enabled", "bool", False, "receive images by DICOM C-STORE (off: no port is opened)"),
    _Key("dicom_listener.ae_title", "aet", ListenerSettings.ae_title, "the AE title consoles send to"),
    _Key("dicom_listener.port", "int", ListenerSettings.port, "TCP port of the listener", minimum=1, maximum=65535),
    _Key("dicom_listener.bind_address", "text", ListenerSettings.bind_address,
         "address to listen on (0.0.0.0: every interface)"),
    _Key("dicom_listener.allowed_ae_titles", "aets", (), "calling AE titles allowed to store (empty: any from an "
         "allowed host)"),
    _Key("dicom_listener.allowed_hosts", "hosts", (), "peer addresses, networks (10.1.2.0/24) or host names allowed "
         "to store (empty: any host with an allowed AE title)"),
    _Key("dicom_listener.max_associations", "int", ListenerSettings.max_associations,
         "associations served at the same time (more are refused as 'local limit exceeded')", minimum=1),
    _Key("dicom_listener.root", "path", None, "the watched root received instances are written into (default: the "
         "first root)", nullable=True),
    _Key("dicom_listener.completion_grace_s", "float", ListenerSettings.completion_grace_s,
         "seconds after the association that sent a series ended before it counts as complete", minimum=0.0),
    _Key("dicom_listener.min_free_mb", "float", ListenerSettings.min_free_mb,
         "free MB the root must keep; below it stores are refused as 'out of resources'", minimum=0.0),
    _Key("dicom_listener.sop_classes", "uids", DEFAULT_SOP_CLASSES, "storage SOP classes accepted"),
    _Key("dicom_listener.transfer_syntaxes", "uids", DEFAULT_TRANSFER_SYNTAXES, "transfer syntaxes accepted"),
    _Key("dicom_listener.tls_certificate", "file", None, "TLS: the listener's certificate (PEM); null: no TLS",
         nullable=True),
    _Key("dicom_listener.tls_key", "file", None, "TLS: the certificate's private key (PEM)", nullable=True),
    _Key("dicom_listener.tls_ca", "file", None, "TLS: CA certificates that peers' certificates must chain to",
         nullable=True),
    _Key("dicom_listener.tls_require_peer_certificate", "bool", False, "TLS: peers must present a certificate "
         "signed by tls_ca (mutual TLS)"),
    _Key("destinations", "destinations", (), "DICOM nodes the results are sent to (name, ae_title, host, port, "
         "send)"),
    _Key("delivery.retry_initial_s", "float", DeliverySettings.retry_initial_s, "seconds before the first retry of "
         "a delivery (doubled at each failure)", minimum=0.0, exclusive_minimum=True),
    _Key("delivery.retry_max_s", "float", DeliverySettings.retry_max_s, "longest wait between delivery retries",
         minimum=0.0, exclusive_minimum=True),
    _Key("delivery.max_age_h", "float", DeliverySettings.max_age_h, "hours after which an undelivered result is "
         "given up and reported", minimum=0.0, exclusive_minimum=True),
)
KEYS: dict[str, _Key] = {k.path: k for k in _KEYS}
_SECTIONS = {p.split(".")[0] for p in KEYS if "." in p}


def env_name(key_path: str) -> str:
    """The environment variable that sets ``key_path``: EDGESEG_QUIET_PERIOD_S, EDGESEG_OUTPUTS__PREVIEW."""
    return ENV_PREFIX + key_path.upper().replace(".", "__")


@dataclass(frozen=True)
class _Value:
    value: Any
    origin: str  # "file", "environment", "command line", "default"
    where: str  # human text: "/etc/watch_config.yaml", "EDGESEG_DEVICE", "--device"
    base: Path  # folder relative paths are resolved against


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, key: str, problem: str, fix: str) -> None:
        end = "" if problem.endswith("?") else "."
        self.lines.append(f"{where}: {key}: {problem}{end} Fix: {fix}.")

    def raise_if_any(self) -> None:
        if self.lines:
            more = f" (and {len(self.lines) - 1} more problem(s) below)" if len(self.lines) > 1 else ""
            raise ConfigError("Invalid watcher configuration" + more + ":\n  " + "\n  ".join(self.lines))


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _read_file(path: Path, problems: _Problems) -> dict[str, _Value]:
    import yaml

    if not path.is_file():
        raise ConfigError(
            f"Configuration file {path} does not exist. Fix: pass --config with the path of your "
            "watch_config.yaml (the documented example is in the edgeseg folder), or leave --config out and give "
            "--root and --bundle on the command line."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at} ({getattr(err, 'problem', err)}). Fix the syntax.") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err}). Fix: check the file's permissions and encoding.") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (roots:, bundle:, ...), "
                          f"not a {type(data).__name__}. Fix: see the documented watch_config.yaml.")
    out: dict[str, _Value] = {}
    base = path.parent.resolve()
    top_known = sorted({p.split(".")[0] for p in KEYS})
    for key, value in data.items():
        key = str(key)
        if key in _SECTIONS:
            if not isinstance(value, dict):
                problems.add(str(path), key, f"must be a mapping of {', '.join(_section_keys(key))}",
                             f"write '{key}:' followed by indented keys")
                continue
            sub_known = _section_keys(key)
            for sub, sub_value in value.items():
                full = f"{key}.{sub}"
                if full not in KEYS:
                    problems.add(str(path), full, "unknown key" + _suggest(str(sub), sub_known),
                                 f"correct or remove it (keys under {key}: {', '.join(sub_known)})")
                    continue
                out[full] = _Value(sub_value, "file", str(path), base)
        elif key in KEYS:
            out[key] = _Value(value, "file", str(path), base)
        else:
            problems.add(str(path), key, "unknown key" + _suggest(key, top_known),
                         f"correct or remove it (known keys: {', '.join(top_known)})")
    return out


def _section_keys(section: str) -> list[str]:
    return [p.split(".", 1)[1] for p in KEYS if p.startswith(section + ".")]


def _read_env(env: Mapping[str, str], problems: _Problems) -> dict[str, _Value]:
    import yaml

    out: dict[str, _Value] = {}
    cwd = Path.cwd()
    for key in KEYS.values():
        name = env_name(key.path)
        if name not in env:
            continue
        raw = env[name]
        value: Any = raw
        if key.kind in ("paths", "globs"):
            value = yaml.safe_load(raw) if raw.strip().startswith("[") else [s for s in raw.split(os.pathsep) if s]
        elif key.kind in ("aets", "hosts", "uids"):
            value = yaml.safe_load(raw) if raw.strip().startswith("[") else [s for s in raw.split(",") if s.strip()]
        elif key.kind == "destinations":
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
        elif key.kind in ("float", "int", "bool"):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
        elif key.nullable and raw.strip().lower() in ("null", "none", ""):
            value = None
        out[key.path] = _Value(value, "environment", name, cwd)
    return out


def _read_overrides(overrides: Mapping[str, Any], problems: _Problems) -> dict[str, _Value]:
    out: dict[str, _Value] = {}
    for path, value in overrides.items():
        if value is None:
            continue
        if path not in KEYS:
            problems.add("command line", path, "unknown key" + _suggest(path, list(KEYS)), "correct the option")
            continue
        out[path] = _Value(value, "command line", "--" + path.replace("_", "-").replace(".", "-"), Path.cwd())
    return out


def _check(key: _Key, v: _Value, problems: _Problems, check_paths: bool) -> Any:
    """Validate and convert one value; on failure record a problem and return the default."""
    value = v.value
    where = v.where
    if value is None:
        if key.nullable:
            return None
        problems.add(where, key.path, "must not be empty (null)", f"give a value, e.g. {key.default!r}")
        return key.default
    kind = key.kind
    if kind == "bool":
        if not isinstance(value, bool):
            problems.add(where, key.path, f"must be true or false, got {value!r}", "write true or false")
            return key.default
        return value
    if kind in ("float", "int"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and isinstance(value, float)
                                                                               and not value.is_integer()):
            want = "a whole number" if kind == "int" else "a number of seconds"
            problems.add(where, key.path, f"must be {want}, got {value!r} ({type(value).__name__})",
                         f"write e.g. {key.default if key.default is not None else 1}")
            return key.default
        num = int(value) if kind == "int" else float(value)
        if key.minimum is not None and (num < key.minimum or (key.exclusive_minimum and num <= key.minimum)):
            rel = ">" if key.exclusive_minimum else ">="
            problems.add(where, key.path, f"must be {rel} {key.minimum:g}, got {num:g}", "choose a larger value")
            return key.default
        if key.maximum is not None and num > key.maximum:
            problems.add(where, key.path, f"must be <= {key.maximum:g}, got {num:g}", "choose a smaller value")
            return key.default
        return num
    if kind == "enum":
        text = value.value if isinstance(value, enum.Enum) else value
        if not isinstance(text, str) or text.lower() not in key.choices:
            problems.add(where, key.path, f"must be one of {', '.join(key.choices)}, got {value!r}"
                         + (_suggest(str(text).lower(), list(key.choices)) if isinstance(text, str) else ""),
                         f"use one of {', '.join(key.choices)}")
            return key.default
        return text.lower()
    if kind == "device":  # the engine's own rule (runtime/infer/devices.py)
        problem = device_problem(value)
        if problem:
            problems.add(where, key.path, problem, f"use {SUPPORTED_DEVICES}; `edgeseg doctor` lists this PC's")
            return key.default
        return normalize_device(value)
    if kind in ("text", "aet"):
        problem = ae_title_problem(value) if kind == "aet" else (
            None if isinstance(value, str) and value.strip() else f"must be text, got {value!r}")
        if problem:
            problems.add(where, key.path, problem, "write e.g. " + repr(key.default))
            return key.default
        return str(value).strip()
    if kind in ("aets", "hosts", "uids"):
        if isinstance(value, str):
            value = [value]
        check = {"aets": ae_title_problem, "hosts": host_problem,
                 "uids": lambda u: None if is_valid_uid(u) else f"{u!r} is not a UID"}[kind]
        if not isinstance(value, (list, tuple)):
            problems.add(where, key.path, f"must be a list, got {value!r}", "write a YAML list, e.g. [CONSOLE1]")
            return key.default
        bad = [(i, why) for i, item in enumerate(value) if (why := check(item))]
        for i, why in bad:
            problems.add(where, f"{key.path}[{i}]", why, "correct or remove it")
        return key.default if bad else tuple(str(v).strip() for v in value)
    if kind == "destinations":
        destinations, found = parse_destinations(value, v.base)
        for key_path, why, fix in found:
            problems.add(where, key_path, why, fix)
        return destinations
    if kind == "file":
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            problems.add(where, key.path, f"must be a file path, got {value!r}", "write a path")
            return key.default
        path = _resolve(value, v.base)
        if check_paths and not path.is_file():
            problems.add(where, key.path, f"{path} does not exist", "give the path of an existing PEM file")
        return path
    if kind == "globs":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(g, str) and g for g in value):
            problems.add(where, key.path, f"must be a list of glob patterns, got {value!r}",
                         "write a YAML list, e.g. [\"*.dcm\", \"*.nii.gz\"]")
            return key.default
        return tuple(value)
    if kind == "paths":
        if isinstance(value, (str, os.PathLike)):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) and str(p) for p in value):
            problems.add(where, key.path, f"must be a list of folders, got {value!r}",
                         "write a YAML list of folders, e.g. [D:/export]")
            return key.default
        out = []
        for i, p in enumerate(value):
            path = _resolve(p, v.base)
            if check_paths and not path.is_dir():
                what = "is not a folder" if path.exists() else "does not exist"
                problems.add(where, f"{key.path}[{i}]", f"{path} {what}",
                             "create the folder, mount the share, or correct the path")
            out.append(path)
        return tuple(out)
    if kind in ("path", "bundle"):
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            problems.add(where, key.path, f"must be a folder path, got {value!r}", "write a path")
            return key.default
        if kind == "bundle" and str(value) == DEMO_BUNDLE_KEYWORD:
            path = edgeseg.demo.BUNDLE_DIR
            if check_paths and not (path / "bundle.json").is_file():
                problems.add(where, key.path, f"'demo' means the packaged demo bundle, which is not in this build "
                             f"({path} has no bundle.json)",
                             "build the demo bundle (edgeseg/demo/bundle) or point bundle at an exported bundle folder")
            return path
        path = _resolve(value, v.base)
        if kind == "bundle" and check_paths and not path.exists():
            problems.add(where, key.path, f"{path} does not exist",
                         "point bundle at the folder `edgeseg export` wrote (it holds bundle.json), or use 'demo'")
        return path
    raise AssertionError(kind)  # pragma: no cover


def _resolve(p: str | os.PathLike[str], base: Path) -> Path:
    path = Path(os.path.expandvars(os.path.expanduser(os.fspath(p))))
    if not path.is_absolute():
        path = base / path
    return Path(os.path.abspath(path))


def _ensure_writable_dir(path: Path, key: str, where: str, problems: _Problems) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        problems.add(where, key, f"{path} cannot be created ({err.strerror or err})",
                     "choose a folder this user may write to")
        return
    if not os.access(path, os.W_OK):
        problems.add(where, key, f"{path} is not writable", "choose a folder this user may write to")


def load_config(
    path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    check_paths: bool = True,
) -> WatchConfig:
    """Read, merge and validate the configuration.

    ``path``: the YAML file (None: none). ``overrides``: command-line values by key path (None values are
    ignored, so unset flags fall through). ``env``: the environment (default ``os.environ``). With
    ``check_paths`` the watch roots and the bundle must exist and the state and log folders are created.
    Raises :class:`ConfigError` listing every problem.
    """
    problems = _Problems()
    layers: dict[str, _Value] = {}
    source = Path(os.path.abspath(path)) if path is not None else None
    if source is not None:
        layers.update(_read_file(source, problems))
    layers.update(_read_env(os.environ if env is None else env, problems))
    layers.update(_read_overrides(overrides or {}, problems))

    values: dict[str, Any] = {}
    for key in KEYS.values():
        v = layers.get(key.path)
        if v is None:
            values[key.path] = key.default
            continue
        values[key.path] = _check(key, v, problems, check_paths)
    # derived defaults
    if values["state_dir"] is None:
        values["state_dir"] = (source.parent / "edgeseg-state") if source else Path.home() / ".edgeseg" / "watch"
    if values["log_dir"] is None:
        values["log_dir"] = values["state_dir"] / "logs"
    if values["bundle"] == DEMO_BUNDLE_KEYWORD:  # the default, not set anywhere
        demo = edgeseg.demo.BUNDLE_DIR
        if check_paths and not (demo / "bundle.json").is_file():
            problems.add("default", "bundle", f"'demo' means the packaged demo bundle, which is not in this build "
                         f"({demo} has no bundle.json)", "set bundle: to an exported bundle folder")
        values["bundle"] = demo
    if "time_ceiling_s" not in layers and values["time_budget_s"] is not None:  # the default follows the budget
        values["time_ceiling_s"] = max(KEYS["time_ceiling_s"].default, 3 * values["time_budget_s"])
    if (values["time_ceiling_s"] is not None and values["time_budget_s"] is not None
            and values["time_ceiling_s"] < values["time_budget_s"]):
        origin = layers.get("time_ceiling_s")
        problems.add(origin.where if origin else "default", "time_ceiling_s",
                     f"{values['time_ceiling_s']:g} s is below time_budget_s ({values['time_budget_s']:g} s)",
                     "set time_ceiling_s to at least time_budget_s (or null for no ceiling)")
    if not values["roots"]:
        problems.add(str(source) if source else "command line", "roots", "no folder to watch",
                     "list at least one folder under roots: in the file, or pass --root DIR")
    listener = _listener(values, layers, problems)
    if check_paths:
        for dir_key in ("state_dir", "log_dir"):
            origin = layers.get(dir_key)
            _ensure_writable_dir(values[dir_key], dir_key, origin.where if origin else "default", problems)
    problems.raise_if_any()

    return WatchConfig(
        roots=tuple(dict.fromkeys(values["roots"])),
        include=values["include"],
        exclude=values["exclude"],
        observer=ObserverKind(values["observer"]),
        polling_interval_s=values["polling_interval_s"],
        rescan_interval_s=values["rescan_interval_s"],
        quiet_period_s=values["quiet_period_s"],
        bundle=values["bundle"],
        device=values["device"],
        threads=values["threads"],
        precision=values["precision"],
        time_budget_s=values["time_budget_s"],
        time_ceiling_s=values["time_ceiling_s"],
        limits=ReadLimits(
            max_voxels=values["limits.max_voxels"],
            max_decompressed_mb=values["limits.max_decompressed_mb"],
            max_frames=values["limits.max_frames"],
        ),
        outputs=OutputOptions(
            per_structure=values["outputs.per_structure"],
            dicom_seg=values["outputs.dicom_seg"],
            dicom_sr=values["outputs.dicom_sr"],
            seg_type=values["outputs.seg_type"],
            statistics=values["outputs.statistics"],
            preview=values["outputs.preview"],
        ),
        echoes=values["echoes"],
        state_dir=values["state_dir"],
        log_dir=values["log_dir"],
        max_concurrent_series=values["max_concurrent_series"],
        max_attempts=values["max_attempts"],
        stop_grace_s=values["stop_grace_s"],
        node=NodeSettings(
            listener=listener,
            destinations=values["destinations"],
            delivery=DeliverySettings(retry_initial_s=values["delivery.retry_initial_s"],
                                      retry_max_s=values["delivery.retry_max_s"],
                                      max_age_h=values["delivery.max_age_h"]),
        ),
        source=source,
    )


def _listener(values: dict[str, Any], layers: dict[str, _Value], problems: _Problems) -> ListenerSettings:
    """The ``dicom_listener`` section as :class:`ListenerSettings`, with the checks that involve several keys: an
    enabled listener names the peers it accepts, writes into a watched root, and has a key beside its certificate."""
    def where(key: str) -> str:
        origin = layers.get(f"dicom_listener.{key}")
        return origin.where if origin else "default"

    enabled = values["dicom_listener.enabled"]
    roots = values["roots"] or ()
    root = values["dicom_listener.root"]
    if root is None and roots:
        root = roots[0]
    if enabled and root is not None and roots and not any(root == r or r in root.parents for r in roots):
        problems.add(where("root"), "dicom_listener.root", f"{root} is not inside a watched root "
                     f"({', '.join(map(str, roots))}): received series would never be segmented",
                     "choose one of the roots (or a folder inside one), or leave it out for the first root")
    if enabled and not values["dicom_listener.allowed_ae_titles"] and not values["dicom_listener.allowed_hosts"]:
        problems.add(where("enabled"), "dicom_listener", "the listener is enabled but allows every peer",
                     "list the consoles under allowed_ae_titles and/or allowed_hosts (allowed_hosts: [0.0.0.0/0] "
                     "allows every IPv4 host deliberately)")
    cert, key, ca = (values[f"dicom_listener.tls_{k}"] for k in ("certificate", "key", "ca"))
    tls = None
    if cert is not None or key is not None or ca is not None:
        if cert is None or key is None:
            problems.add(where("tls_certificate"), "dicom_listener.tls_certificate",
                         "TLS needs both the certificate and its key", "set tls_certificate and tls_key (PEM files)")
        if values["dicom_listener.tls_require_peer_certificate"] and ca is None:
            problems.add(where("tls_require_peer_certificate"), "dicom_listener.tls_ca",
                         "mutual TLS needs the CA that signs the consoles' certificates", "set tls_ca (PEM)")
        tls = TlsSettings(cert, key, ca, values["dicom_listener.tls_require_peer_certificate"])
    return ListenerSettings(
        enabled=enabled,
        ae_title=values["dicom_listener.ae_title"],
        port=values["dicom_listener.port"],
        bind_address=values["dicom_listener.bind_address"],
        allowed_ae_titles=values["dicom_listener.allowed_ae_titles"],
        allowed_hosts=values["dicom_listener.allowed_hosts"],
        max_associations=values["dicom_listener.max_associations"],
        root=root,
        completion_grace_s=values["dicom_listener.completion_grace_s"],
        min_free_mb=values["dicom_listener.min_free_mb"],
        sop_classes=values["dicom_listener.sop_classes"],
        transfer_syntaxes=values["dicom_listener.transfer_syntaxes"],
        tls=tls,
    )


def describe(config: WatchConfig) -> list[tuple[str, str]]:
    """(key path, value) pairs for logs and ``edgeseg doctor``."""
    def show(v: Any) -> str:
        if isinstance(v, tuple):
            return ", ".join(show(x) for x in v) or "(none)"
        if isinstance(v, enum.Enum):
            return str(v.value)
        return "null" if v is None else str(v)

    def value(key: str) -> Any:
        section, _, name = key.partition(".")
        if section == "dicom_listener":
            listener = config.node.listener
            if name.startswith("tls_"):
                tls = listener.tls
                attr = {"tls_certificate": "certificate", "tls_key": "key", "tls_ca": "ca",
                        "tls_require_peer_certificate": "require_peer_certificate"}[name]
                return getattr(tls, attr) if tls else (False if attr == "require_peer_certificate" else None)
            return getattr(listener, name)
        if section == "delivery":
            return getattr(config.node.delivery, name)
        if key == "destinations":
            return tuple(f"{d.name}={d.address}" for d in config.node.destinations)
        return getattr(getattr(config, section), name) if name else getattr(config, key)

    return [(k, show(value(k))) for k in KEYS]
