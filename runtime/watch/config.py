"""``watch_config.yaml``: the watcher's one typed configuration object and its one loader.

The keys, their types, defaults and checks are the settings schema's (:mod:`edgeseg.runtime.settings.schema`; the
reference is ``docs/configuration.md``); this module reads the layers with the one validator
(:mod:`edgeseg.runtime.settings.validate`) and builds the frozen :class:`WatchConfig`. Layers, strongest first::

    command line  >  environment (EDGESEG_<KEY>, dots as "__": EDGESEG_OUTPUTS__PREVIEW)  >  file  >  defaults

Every unknown key, wrong type or missing input path fails at start with a :class:`~edgeseg.errors.ConfigError`
naming the key path, where the value came from, and the fix (``outputs.preveiw: unknown key; did you mean
preview?``). Relative paths in the file are resolved against the file's folder; relative paths from the
environment or the command line against the current folder. ``bundle: demo`` means the packaged demo bundle.
"""
from __future__ import annotations

import enum
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgeseg.runtime.node.settings import NodeSettings
from edgeseg.runtime.options import OutputOptions, SegmentOptions
from edgeseg.runtime.read.limits import ReadLimits
from edgeseg.runtime.read.selection import SelectionRules
from edgeseg.runtime.settings.enums import Echoes, ObserverKind, Precision
from edgeseg.runtime.settings.run import selection_rules
from edgeseg.runtime.settings.schema import (
    BUNDLE_REMEDY, DEFAULT_EXCLUDE, DEMO_BUNDLE_KEYWORD, ENV_PREFIX, HOME_STATE_DIR, WATCH_KEYS, Key, default, env_name,
)
from edgeseg.runtime.settings.validate import (
    Problems, Value, check_budget_and_ceiling, check_roots, node_settings, read_env, read_file, read_flags,
    resolve,
)
from edgeseg.runtime.watch.retention import RetentionPolicy

__all__ = ["DEFAULT_EXCLUDE", "DEMO_BUNDLE_KEYWORD", "ENV_PREFIX", "KEYS", "ObserverKind", "WatchConfig", "describe",
           "env_name", "load_config"]

#: the keys of watch_config.yaml by key path (the schema's :data:`~edgeseg.runtime.settings.schema.WATCH_KEYS`)
KEYS: dict[str, Key] = WATCH_KEYS


@dataclass(frozen=True)
class StatusPageSettings:
    """``status_page:``: the watcher's read-only web page (:mod:`edgeseg.runtime.watch.status_page`). ``token``:
    required for any bind address but loopback (checked at load time). TLS is the DICOM listener's certificate."""

    enabled: bool = default("status_page.enabled")
    bind_address: str = default("status_page.bind_address")
    port: int = default("status_page.port")
    token: str | None = default("status_page.token")


@dataclass(frozen=True)
class AlertSettings:
    """``alerts:``: the webhook (:mod:`edgeseg.runtime.watch.alerts`); ``webhook_url`` None: no alerts."""

    webhook_url: str | None = default("alerts.webhook_url")
    site: str = ""
    disk_min_free_mb: float = default("alerts.disk_min_free_mb")
    max_age_h: float = default("alerts.max_age_h")


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: the only bind addresses a status page may use without a token."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip()).is_loopback
    except ValueError:
        return False


def _status_page(values: dict[str, Any], where: Any, problems: Problems) -> StatusPageSettings:
    page = StatusPageSettings(enabled=values["status_page.enabled"], bind_address=values["status_page.bind_address"],
                              port=values["status_page.port"], token=values["status_page.token"] or None)
    if page.enabled and not is_loopback(page.bind_address) and not page.token:
        problems.add(where("status_page.bind_address"), "status_page.token",
                     f"the status page shows patient IDs and would listen on {page.bind_address} without a token",
                     "set status_page.token to a long random secret (or bind_address: 127.0.0.1)")
    if page.token is not None and not re.fullmatch(r"[A-Za-z0-9._~+/=-]{16,}", page.token):
        problems.add(where("status_page.token"), "status_page.token",
                     "shorter than 16 characters, or holds characters other than letters, digits and . _ ~ + / = -",
                     "use a long random secret, e.g. the output of `python -c \"import secrets; "
                     "print(secrets.token_urlsafe())\"`")
    return page


def _alerts(values: dict[str, Any], where: Any, problems: Problems) -> AlertSettings:
    url = values["alerts.webhook_url"] or None
    if url is not None and not url.lower().startswith(("http://", "https://")):
        problems.add(where("alerts.webhook_url"), "alerts.webhook_url", f"{url!r} is not an http(s) URL",
                     "write the full URL, e.g. https://alerts.example.org/hooks/edgeseg")
    return AlertSettings(webhook_url=url, site=values["alerts.site"] or socket.gethostname(),
                         disk_min_free_mb=values["alerts.disk_min_free_mb"], max_age_h=values["alerts.max_age_h"])


@dataclass(frozen=True)
class WatchConfig:
    """The validated watcher configuration. Paths are absolute; durations are seconds."""

    roots: tuple[Path, ...]
    #: the model bundle folder: required, nothing runs a model nobody named
    bundle: Path
    include: tuple[str, ...] = default("include")
    exclude: tuple[str, ...] = default("exclude")
    observer: ObserverKind = default("observer")
    polling_interval_s: float = default("polling_interval_s")
    rescan_interval_s: float = default("rescan_interval_s")
    quiet_period_s: float = default("quiet_period_s")
    device: str = default("device")
    threads: int | None = default("threads")
    precision: Precision = default("precision")
    time_budget_s: float | None = default("time_budget_s")
    #: hard limit per series: refused up front when even the fastest plan cannot fit, cancelled when run past it
    time_ceiling_s: float | None = default("time_ceiling_s")
    #: before the first series of the bundle on this PC, segment the shipped MRI so the planner has measured rates
    warm_up: bool = default("warm_up")
    outputs: OutputOptions = field(default_factory=OutputOptions)
    #: the 3-D stacks of a series that holds several (echoes, image types, time points) to segment: all or first
    echoes: Echoes = default("echoes")
    #: which series are segmented (``selection.*``; ``echoes`` is its multi-volume rule); the rest is skipped by rule
    selection: SelectionRules = field(default_factory=SelectionRules)
    #: what is removed and when: received images and results after delivery, the free-space watermark
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    #: what a series' headers may promise (voxels, decompressed bytes, frames); beyond: refused, not retried
    limits: ReadLimits = field(default_factory=ReadLimits)
    state_dir: Path = HOME_STATE_DIR
    log_dir: Path = HOME_STATE_DIR / "logs"
    max_concurrent_series: int = default("max_concurrent_series")
    max_attempts: int = default("max_attempts")
    stop_grace_s: float = default("stop_grace_s")
    #: the DICOM node: listener (off by default), destinations and delivery retries
    node: NodeSettings = field(default_factory=NodeSettings)
    #: the read-only status page (off by default) and the alerts webhook (none by default)
    status_page: StatusPageSettings = field(default_factory=StatusPageSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    #: the file this configuration was read from (None: defaults, environment and command line only)
    source: Path | None = None

    @property
    def received_root(self) -> Path | None:
        """Where the DICOM listener writes what it receives (None: no listener)."""
        listener = self.node.listener
        if not listener.enabled:
            return None
        return Path(listener.root) if listener.root is not None else (self.roots[0] if self.roots else None)

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


def _ensure_writable_dir(path: Path, key: str, where: str, problems: Problems) -> None:
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
    problems = Problems("watcher configuration")
    source = Path(os.path.abspath(path)) if path is not None else None
    layers: list[dict[str, Value]] = []
    if source is not None:
        layers.append(read_file(source, KEYS, problems))
    layers.append(read_env(os.environ if env is None else env, KEYS))
    layers.append(read_flags(overrides or {}, KEYS, problems))
    values, merged = resolve(KEYS, layers, problems, command="watch", check_paths=check_paths)

    def where(key: str) -> str:
        origin = merged.get(key)
        return origin.where if origin else "default"

    # derived defaults
    if values["state_dir"] is None:
        values["state_dir"] = (source.parent / "edgeseg-state") if source else HOME_STATE_DIR
    if values["log_dir"] is None:
        values["log_dir"] = values["state_dir"] / "logs"
    if values["bundle"] is None:  # nothing runs a model nobody named
        problems.add(str(source) if source else "command line", "bundle", "no model bundle named",
                     f"set bundle: (on the command line --bundle) to {BUNDLE_REMEDY}")
    if "time_ceiling_s" not in merged and values["time_budget_s"] is not None:  # the default follows the budget
        values["time_ceiling_s"] = max(default("time_ceiling_s"), 3 * values["time_budget_s"])
    check_budget_and_ceiling(values, merged, problems)
    if not values["roots"]:
        problems.add(str(source) if source else "command line", "roots", "no folder to watch",
                     "list at least one folder under roots: in the file, or pass --root DIR")
    check_roots(values["roots"], values["state_dir"], where("roots"), problems)
    node = node_settings(values, merged, problems)
    status_page = _status_page(values, where, problems)
    alerts = _alerts(values, where, problems)
    if check_paths:
        for dir_key in ("state_dir", "log_dir"):
            _ensure_writable_dir(values[dir_key], dir_key, where(dir_key), problems)
    problems.raise_if_any()

    return WatchConfig(
        roots=tuple(dict.fromkeys(values["roots"])),
        include=values["include"],
        exclude=values["exclude"],
        observer=values["observer"],
        polling_interval_s=values["polling_interval_s"],
        rescan_interval_s=values["rescan_interval_s"],
        quiet_period_s=values["quiet_period_s"],
        bundle=values["bundle"],
        device=values["device"],
        threads=values["threads"],
        precision=values["precision"],
        time_budget_s=values["time_budget_s"],
        time_ceiling_s=values["time_ceiling_s"],
        warm_up=values["warm_up"],
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
        selection=selection_rules(lambda path: values[path]),
        retention=RetentionPolicy(received_days=values["retention.received_days"],
                                  results_days=values["retention.results_days"],
                                  min_free_mb=values["retention.min_free_mb"],
                                  export_folders=values["retention.export_folders"],
                                  interval_s=values["retention.interval_s"]),
        state_dir=values["state_dir"],
        log_dir=values["log_dir"],
        max_concurrent_series=values["max_concurrent_series"],
        max_attempts=values["max_attempts"],
        stop_grace_s=values["stop_grace_s"],
        node=node,
        status_page=status_page,
        alerts=alerts,
        source=source,
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
        if section == "status_page" and name == "token":
            return "(set)" if config.status_page.token else None
        if key == "destinations":
            return tuple(f"{d.name}={d.address}" for d in config.node.destinations)
        return getattr(getattr(config, section), name) if name else getattr(config, key)

    return [(k, show(value(k))) for k in KEYS]
