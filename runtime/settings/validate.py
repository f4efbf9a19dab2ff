"""The one validator of the settings: layers in, checked values out, every problem collected.

A *layer* maps key paths to :class:`Value` (the raw value, where it came from, the folder its relative paths are
resolved against). Layers are read from a YAML file (:func:`read_file`), the environment (:func:`read_env`), a
mapping such as mercure's ``process.settings`` (:func:`read_mapping`) or the command line (:func:`read_flags`);
:func:`resolve` merges them, weakest first, checks each value with :func:`check` and fills in the defaults.

Every problem is one line ``<where>: <key path>: <problem>. Fix: <fix>.`` (``/etc/edgeseg/watch_config.yaml:
outputs.preveiw: unknown key; did you mean preview? Fix: correct or remove it (...)``), collected in
:class:`Problems` and raised at once as one :class:`~edgeseg.errors.ConfigError`.
"""
from __future__ import annotations

import difflib
import enum
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import edgeseg.demo
from edgeseg.errors import ConfigError
from edgeseg.runtime.infer.devices import SUPPORTED_DEVICES, device_problem, normalize_device
from edgeseg.runtime.node.settings import (
    DeliverySettings, Destination, ListenerSettings, NodeSettings, TlsSettings, ae_title_problem, host_problem,
    is_valid_uid,
)
from edgeseg.runtime.settings.schema import (
    DEMO_BUNDLE_KEYWORD, DESTINATION_KEYS, DESTINATION_REQUIRED, Key, Kind, env_name,
)

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class Value:
    """A raw value and its origin: ``where`` as messages name it (``/etc/watch_config.yaml``, ``EDGESEG_DEVICE``,
    ``--device``, ``task.json``), ``base`` the folder its relative paths are resolved against."""

    value: Any
    where: str
    base: Path


class Problems:
    """The problems found so far; :meth:`raise_if_any` raises them as one :class:`ConfigError` headed
    ``Invalid <what>``."""

    def __init__(self, what: str = "watcher configuration") -> None:
        self.what = what
        self.lines: list[str] = []

    def add(self, where: str, key: str, problem: str, fix: str) -> None:
        """Record ``<where>: <key>: <problem>. Fix: <fix>.``"""
        end = "" if problem.endswith("?") else "."
        self.lines.append(f"{where}: {key}: {problem}{end} Fix: {fix}.")

    def raise_if_any(self) -> None:
        if self.lines:
            more = f" (and {len(self.lines) - 1} more problem(s) below)" if len(self.lines) > 1 else ""
            raise ConfigError(f"Invalid {self.what}{more}:\n  " + "\n  ".join(self.lines))


def suggest(name: str, known: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean preview?"`` for the closest of ``known``, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]}?" if close else ""


# --------------------------------------------------------------------------------------------------- layers


def read_file(path: Path, keys: Mapping[str, Key], problems: Problems) -> dict[str, Value]:
    """The YAML file at ``path`` as a layer (relative paths against its folder). A file that is missing, not YAML
    or not a mapping is a :class:`ConfigError` at once; unknown keys are problems."""
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
    return read_mapping(data, str(path), keys, problems, base=path.parent.resolve(), syntax="yaml")


def read_mapping(raw: Mapping[str, Any], where: str, keys: Mapping[str, Key], problems: Problems, *,
                 prefix: str = "", base: Path | None = None, syntax: str = "json") -> dict[str, Value]:
    """A mapping of settings as a layer: nested (``{"outputs": {"preview": x}}``) and dotted (``{"outputs.preview":
    x}``) spellings; unknown keys and sections that are not mappings are problems named ``<prefix><key path>``.
    ``syntax`` (``yaml``/``json``) only shapes the fix of a section that is not a mapping."""
    out: dict[str, Value] = {}
    at = base if base is not None else Path.cwd()
    sections: dict[str, list[str]] = {}
    for k in keys.values():
        if k.section is not None:
            sections.setdefault(k.section, []).append(k.name)
    top_known = sorted({p.split(".")[0] for p in keys})
    for name, value in raw.items():
        name = str(name)
        if name in sections:
            sub_known = sections[name]
            if not isinstance(value, Mapping):
                fix = (f"write '{name}:' followed by indented keys" if syntax == "yaml"
                       else f"write {{\"{name}\": {{\"{sub_known[0]}\": ...}}}}")
                problems.add(where, prefix + name, f"must be a mapping of {', '.join(sub_known)}", fix)
                continue
            for sub, sub_value in value.items():
                full = f"{name}.{sub}"
                if full not in keys:
                    problems.add(where, prefix + full, "unknown key" + suggest(str(sub), sub_known),
                                 f"correct or remove it (keys under {name}: {', '.join(sub_known)})")
                    continue
                out[full] = Value(sub_value, where, at)
        elif name in keys:
            out[name] = Value(value, where, at)
        else:
            known = list(keys) if syntax == "json" else top_known
            problems.add(where, prefix + name, "unknown key" + suggest(name, known),
                         f"correct or remove it (known keys: {', '.join(known)})")
    return out


def _env_list(raw: str, sep: str) -> Any:
    import yaml

    return yaml.safe_load(raw) if raw.strip().startswith("[") else [s for s in raw.split(sep) if s.strip()]


def _env_yaml(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


#: how an environment variable's text becomes a value, by kind (lists: os.pathsep- or comma-separated, or YAML)
_ENV_PARSERS: dict[Kind, Callable[[str], Any]] = {
    Kind.PATHS: lambda raw: _env_list(raw, os.pathsep),
    Kind.GLOBS: lambda raw: _env_list(raw, os.pathsep),
    Kind.AETS: lambda raw: _env_list(raw, ","),
    Kind.HOSTS: lambda raw: _env_list(raw, ","),
    Kind.UIDS: lambda raw: _env_list(raw, ","),
    Kind.WORDS: lambda raw: _env_list(raw, ","),
    Kind.DESTINATIONS: _env_yaml,
    Kind.FLOAT: _env_yaml,
    Kind.INT: _env_yaml,
    Kind.BOOL: _env_yaml,
}


def read_env(env: Mapping[str, str], keys: Mapping[str, Key]) -> dict[str, Value]:
    """The EDGESEG_<KEY> variables of ``env`` as a layer (relative paths against the current folder)."""
    out: dict[str, Value] = {}
    cwd = Path.cwd()
    for k in keys.values():
        name = env_name(k.path)
        if name not in env:
            continue
        raw = env[name]
        parse = _ENV_PARSERS.get(k.kind)
        value: Any = raw
        if parse is not None:
            value = parse(raw)
        elif k.nullable and raw.strip().lower() in ("null", "none", ""):
            value = None
        out[k.path] = Value(value, name, cwd)
    return out


def read_flags(values: Mapping[str, Any], keys: Mapping[str, Key], problems: Problems) -> dict[str, Value]:
    """Command-line values by key path as a layer, each named by its flag (``--device``). None values are unset
    flags and fall through."""
    out: dict[str, Value] = {}
    for path, value in values.items():
        if value is None:
            continue
        k = keys.get(path)
        if k is None:
            problems.add("command line", path, "unknown key" + suggest(path, list(keys)), "correct the option")
            continue
        out[path] = Value(value, k.shown_flag, Path.cwd())
    return out


def resolve(keys: Mapping[str, Key], layers: Iterable[Mapping[str, Value]], problems: Problems, *,
            command: str | None = None, check_paths: bool = False,
            prefix: str | Mapping[str, str] = "") -> tuple[dict[str, Any], dict[str, Value]]:
    """Merge ``layers`` (weakest first), check each value that was set and fill in the defaults (of ``command``).
    Returns (checked values by key path, the winning raw value of each key that was set). ``prefix`` is put before
    key paths in messages (``process.settings.``); a mapping gives each key path's own (the prefix of the layer
    its winning value came from)."""
    merged: dict[str, Value] = {}
    for layer in layers:
        merged.update(layer)
    values: dict[str, Any] = {}
    for path, k in keys.items():
        v = merged.get(path)
        if v is None:
            values[path] = k.default_for(command)
            continue
        before = prefix.get(path, "") if isinstance(prefix, Mapping) else prefix
        shown = replace(k, path=before + path) if before else k
        values[path] = check(shown, v, problems, check_paths)
    return values, merged


#: folders no watch root may be (the watcher writes error files and results beside every series it finds below
#: its roots: a root of "/" once wrote 898 error files across a system in 25 s); folders *inside* them are fine
SYSTEM_FOLDERS_POSIX = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media", "/mnt",
                        "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/local", "/var",
                        "/var/lib", "/var/tmp", "/Users", "/System", "/Library", "/Volumes", "/private")
SYSTEM_FOLDERS_WINDOWS = ("Windows", "Program Files", "Program Files (x86)", "ProgramData", "Users")


def system_folder_reason(root: Path, state_dir: Path | None = None) -> str | None:
    """Why ``root`` may not be a watch root, or None: a file-system or drive root, a system folder
    (:data:`SYSTEM_FOLDERS_POSIX`, a drive's ``Windows``/``Program Files``/``Users`` ...), the user's home folder,
    or a folder holding the watcher's own state folder (the state folder's parents)."""
    real = Path(os.path.realpath(root))
    if real == Path(real.anchor):
        return "is the root of a file system (drive)"
    if os.name == "nt":
        if len(real.parts) == 2 and real.parts[1].lower() in {f.lower() for f in SYSTEM_FOLDERS_WINDOWS}:
            return "is a system folder"
    elif str(real) in SYSTEM_FOLDERS_POSIX:
        return "is a system folder"
    try:
        if real == Path(os.path.realpath(Path.home())):
            return "is the user's home folder"
    except RuntimeError:  # no home folder known
        pass
    if state_dir is not None:
        state = Path(os.path.realpath(state_dir))
        if real == state or real in state.parents:
            return f"holds the watcher's own state folder {state_dir}"
    return None


def check_roots(roots: Iterable[Path], state_dir: Path | None, where: str, problems: Problems) -> None:
    """A problem for each root that :func:`system_folder_reason` refuses."""
    for i, root in enumerate(roots):
        reason = system_folder_reason(root, state_dir)
        if reason is not None:
            problems.add(where, f"roots[{i}]", f"{root} {reason}: the watcher would read and write below all of it",
                         "name the export folder the series arrive in (e.g. /data/dicom_export), never a system, "
                         "home or drive folder")


def check_budget_and_ceiling(values: Mapping[str, Any], merged: Mapping[str, Value], problems: Problems) -> None:
    """time_ceiling_s must not be below time_budget_s."""
    budget, ceiling = values.get("time_budget_s"), values.get("time_ceiling_s")
    if ceiling is not None and budget is not None and ceiling < budget:
        origin = merged.get("time_ceiling_s")
        problems.add(origin.where if origin else "default", "time_ceiling_s",
                     f"{ceiling:g} s is below time_budget_s ({budget:g} s)",
                     "set time_ceiling_s to at least time_budget_s (or null for no ceiling)")


# ---------------------------------------------------------------------------------------------------- check

_Checker = Callable[[Key, Value, Problems, bool], Any]


def check(key: Key, v: Value, problems: Problems, check_paths: bool = False) -> Any:
    """Validate and convert one value; on failure record a problem and return the key's default."""
    if v.value is None:
        if key.nullable:
            return None
        problems.add(v.where, key.path, "must not be empty (null)", f"give a value, e.g. {key.default!r}")
        return key.default
    return _CHECKERS[key.kind](key, v, problems, check_paths)


def _bool(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    if not isinstance(v.value, bool):
        problems.add(v.where, key.path, f"must be true or false, got {v.value!r}", "write true or false")
        return key.default
    return v.value


def _number(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    value, is_int = v.value, key.kind is Kind.INT
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            is_int and isinstance(value, float) and not value.is_integer()):
        want = "a whole number" if is_int else "a number of seconds"
        problems.add(v.where, key.path, f"must be {want}, got {value!r} ({type(value).__name__})",
                     f"write e.g. {key.default if key.default is not None else 1}")
        return key.default
    num = int(value) if is_int else float(value)
    low = key.minimum
    if low is not None and (num < low or (key.exclusive_minimum and num <= low)):
        rel = ">" if key.exclusive_minimum else ">="
        problems.add(v.where, key.path, f"must be {rel} {low:g}, got {num:g}", "choose a larger value")
        return key.default
    if key.maximum is not None and num > key.maximum:
        problems.add(v.where, key.path, f"must be <= {key.maximum:g}, got {num:g}", "choose a smaller value")
        return key.default
    return num


def _enum(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    assert key.choices is not None
    allowed = [m.value for m in key.choices]
    text = v.value.value if isinstance(v.value, enum.Enum) else v.value
    if not isinstance(text, str) or text.lower() not in allowed:
        hint = suggest(text.lower(), allowed) if isinstance(text, str) else ""
        problems.add(v.where, key.path, f"must be one of {', '.join(allowed)}, got {v.value!r}" + hint,
                     f"use one of {', '.join(allowed)}")
        return key.default
    return key.choices(text.lower())


def _device(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    problem = device_problem(v.value)  # the engine's own rule (runtime/infer/devices.py)
    if problem:
        problems.add(v.where, key.path, problem, f"use {SUPPORTED_DEVICES}; `edgeseg doctor` lists this PC's")
        return key.default
    return normalize_device(v.value)


def _text(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    value = v.value
    problem = {
        Kind.AET: ae_title_problem,
        Kind.HOST: host_problem,
        Kind.NAME: lambda x: None if isinstance(x, str) and _PLAIN_NAME.fullmatch(x.strip()) else
        f"{x!r} is not a plain name",
        Kind.TEXT: lambda x: None if isinstance(x, str) and x.strip() else f"must be text, got {x!r}",
    }[key.kind](value)
    if problem:
        fix = ("use letters, digits, '_', '.', '-'" if key.kind is Kind.NAME else
               f"write e.g. {key.default!r}" if key.default is not None else f"give the {key.name.replace('_', ' ')}")
        problems.add(v.where, key.path, problem, fix)
        return key.default
    return str(value).strip()


def _variant(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    if not isinstance(v.value, str) or not v.value.strip():
        problems.add(v.where, key.path, f"must be the name of a bundle variant, got {v.value!r}",
                     "write the variant's name as bundle.json lists it (e.g. \"3mm\"), or null")
        return None
    return v.value.strip()


def _uid_problem(value: object) -> str | None:
    return None if is_valid_uid(value) else f"{value!r} is not a UID"


def _role_problem(value: object) -> str | None:
    from edgeseg.runtime.settings.enums import DestinationRole, values

    return None if value in values(DestinationRole) else f"{value!r} is not one of {', '.join(values(DestinationRole))}"


def _items(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    value = [v.value] if isinstance(v.value, str) else v.value
    item_problem = {Kind.AETS: ae_title_problem, Kind.HOSTS: host_problem, Kind.UIDS: _uid_problem,
                    Kind.ROLES: _role_problem}[key.kind]
    if not isinstance(value, (list, tuple)) or (key.kind is Kind.ROLES and not value):
        example = "[seg, sr]" if key.kind is Kind.ROLES else "[CONSOLE1]"
        problems.add(v.where, key.path, f"must be a list, got {v.value!r}", f"write a YAML list, e.g. {example}")
        return key.default
    bad = [(i, why) for i, item in enumerate(value) if (why := item_problem(item))]
    for i, why in bad:
        problems.add(v.where, f"{key.path}[{i}]", why, "correct or remove it")
    return key.default if bad else tuple(dict.fromkeys(str(x).strip() for x in value))


def _globs(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    value = [v.value] if isinstance(v.value, str) else v.value
    if not isinstance(value, (list, tuple)) or not all(isinstance(g, str) and g for g in value):
        problems.add(v.where, key.path, f"must be a list of glob patterns, got {v.value!r}",
                     "write a YAML list, e.g. [\"*.dcm\", \"*.nii.gz\"]")
        return key.default
    return tuple(value)


def _words(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    """A list of words (Modality, ImageType values): compared in upper case."""
    value = [v.value] if isinstance(v.value, str) else v.value
    if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) and w.strip() for w in value):
        problems.add(v.where, key.path, f"must be a list of words, got {v.value!r}",
                     "write a YAML list, e.g. [MR] or [PHASE, LOCALIZER]")
        return key.default
    return tuple(dict.fromkeys(w.strip().upper() for w in value))


def _is_path(value: object) -> bool:
    return isinstance(value, (str, os.PathLike)) and bool(str(value))


def _paths(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    value = [v.value] if isinstance(v.value, (str, os.PathLike)) else v.value
    if not isinstance(value, (list, tuple)) or not all(_is_path(p) for p in value):
        problems.add(v.where, key.path, f"must be a list of folders, got {v.value!r}",
                     "write a YAML list of folders, e.g. [D:/export]")
        return key.default
    out = []
    for i, p in enumerate(value):
        path = resolve_path(p, v.base)
        if check_paths and not path.is_dir():
            what = "is not a folder" if path.exists() else "does not exist"
            problems.add(v.where, f"{key.path}[{i}]", f"{path} {what}",
                         "create the folder, mount the share, or correct the path")
        out.append(path)
    return tuple(out)


def _file(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    if not _is_path(v.value):
        problems.add(v.where, key.path, f"must be a file path, got {v.value!r}", "write a path")
        return key.default
    path = resolve_path(v.value, v.base)
    if check_paths and not path.is_file():
        problems.add(v.where, key.path, f"{path} does not exist", "give the path of an existing PEM file")
    return path


def _folder(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    if not _is_path(v.value):
        problems.add(v.where, key.path, f"must be a folder path, got {v.value!r}", "write a path")
        return key.default
    if key.kind is Kind.BUNDLE and str(v.value) == DEMO_BUNDLE_KEYWORD:
        return demo_bundle(v.where, key.path, problems, check_paths)
    path = resolve_path(v.value, v.base)
    if key.kind is Kind.BUNDLE and check_paths and not path.exists():
        problems.add(v.where, key.path, f"{path} does not exist",
                     "point bundle at the folder `edgeseg export` wrote (it holds bundle.json), or use 'demo'")
    return path


def demo_bundle(where: str, key_path: str, problems: Problems, check_paths: bool) -> Path:
    """The packaged demo bundle's folder (``bundle: demo``); a problem when this build lacks it."""
    path = edgeseg.demo.BUNDLE_DIR
    if check_paths and not (path / "bundle.json").is_file():
        fix = ("set bundle: to an exported bundle folder" if where == "default" else
               "build the demo bundle (edgeseg/demo/bundle) or point bundle at an exported bundle folder")
        problems.add(where, key_path, f"'demo' means the packaged demo bundle, which is not in this build "
                     f"({path} has no bundle.json)", fix)
    return path


def _destinations(key: Key, v: Value, problems: Problems, check_paths: bool) -> Any:
    """``destinations``: a list of mappings, each checked key by key against :data:`DESTINATION_KEYS`."""
    if not isinstance(v.value, (list, tuple)):
        problems.add(v.where, key.path, f"must be a list of destinations, got {type(v.value).__name__}",
                     "write a YAML list: - {name: pacs, ae_title: PACS, host: 10.0.0.5, port: 104}")
        return ()
    out: list[Destination] = []
    names: set[str] = set()
    for i, item in enumerate(v.value):
        at = f"{key.path}[{i}]"
        before = len(problems.lines)
        destination = _destination(item, at, Value(item, v.where, v.base), problems, check_paths)
        if destination is not None and destination.name in names:
            problems.add(v.where, f"{at}.name", f"{destination.name!r} is used twice",
                         "give each destination its own name")
        if destination is not None and len(problems.lines) == before:
            names.add(destination.name)
            out.append(destination)
    return tuple(out)


def _destination(item: Any, at: str, v: Value, problems: Problems, check_paths: bool) -> Destination | None:
    if not isinstance(item, Mapping):
        problems.add(v.where, at, f"must be a mapping ({', '.join(DESTINATION_REQUIRED)}, send), got {item!r}",
                     "write the destination's keys indented under '-'")
        return None
    before = len(problems.lines)
    for name in item:
        if name not in DESTINATION_KEYS:
            problems.add(v.where, f"{at}.{name}", "unknown key" + suggest(str(name), DESTINATION_KEYS),
                         f"correct or remove it (keys of a destination: {', '.join(DESTINATION_KEYS)})")
    for name in DESTINATION_REQUIRED:
        if name not in item:
            problems.add(v.where, f"{at}.{name}", "missing", f"give the destination's {name.replace('_', ' ')}")
    if len(problems.lines) > before:
        return None
    got: dict[str, Any] = {}
    for name, k in DESTINATION_KEYS.items():
        got[name] = check(replace(k, path=f"{at}.{name}"), Value(item[name], v.where, v.base), problems,
                          check_paths=True) if name in item else k.default
    if len(problems.lines) > before:
        return None
    tls = None
    if any(got[k] is not None for k in ("tls_certificate", "tls_key", "tls_ca")):
        tls = TlsSettings(got["tls_certificate"], got["tls_key"], got["tls_ca"])
    return Destination(name=got["name"], ae_title=got["ae_title"], host=got["host"], port=got["port"],
                       send=got["send"], calling_ae_title=got["calling_ae_title"], tls=tls,
                       timeout_s=got["timeout_s"])


_CHECKERS: dict[Kind, _Checker] = {
    Kind.BOOL: _bool, Kind.INT: _number, Kind.FLOAT: _number, Kind.ENUM: _enum, Kind.DEVICE: _device,
    Kind.TEXT: _text, Kind.NAME: _text, Kind.AET: _text, Kind.HOST: _text, Kind.VARIANT: _variant,
    Kind.AETS: _items, Kind.HOSTS: _items, Kind.UIDS: _items, Kind.ROLES: _items, Kind.GLOBS: _globs,
    Kind.WORDS: _words,
    Kind.PATHS: _paths, Kind.PATH: _folder, Kind.BUNDLE: _folder, Kind.FILE: _file,
    Kind.DESTINATIONS: _destinations,
}


def resolve_path(p: str | os.PathLike[str], base: Path) -> Path:
    """``p`` with ``~`` and variables expanded, relative to ``base``, absolute."""
    path = Path(os.path.expandvars(os.path.expanduser(os.fspath(p))))
    if not path.is_absolute():
        path = base / path
    return Path(os.path.abspath(path))


# ------------------------------------------------------------------------------------------- the DICOM node


def node_settings(values: Mapping[str, Any], merged: Mapping[str, Value], problems: Problems) -> NodeSettings:
    """The ``dicom_listener``, ``destinations`` and ``delivery`` values as :class:`NodeSettings`, with the checks
    that involve several keys: an enabled listener names the peers it accepts, writes into a watched root, and has
    a key beside its certificate."""
    def where(name: str) -> str:
        origin = merged.get(f"dicom_listener.{name}")
        return origin.where if origin else "default"

    def get(name: str) -> Any:
        return values[f"dicom_listener.{name}"]

    enabled = get("enabled")
    roots = values.get("roots") or ()
    root = get("root")
    if root is None and roots:
        root = roots[0]
    if enabled and root is not None and roots and not any(root == r or r in root.parents for r in roots):
        problems.add(where("root"), "dicom_listener.root", f"{root} is not inside a watched root "
                     f"({', '.join(map(str, roots))}): received series would never be segmented",
                     "choose one of the roots (or a folder inside one), or leave it out for the first root")
    if enabled and not get("allowed_ae_titles") and not get("allowed_hosts"):
        problems.add(where("enabled"), "dicom_listener", "the listener is enabled but allows every peer",
                     "list the consoles under allowed_ae_titles and/or allowed_hosts (allowed_hosts: [0.0.0.0/0] "
                     "allows every IPv4 host deliberately)")
    cert, key, ca = get("tls_certificate"), get("tls_key"), get("tls_ca")
    tls = None
    if cert is not None or key is not None or ca is not None:
        if cert is None or key is None:
            problems.add(where("tls_certificate"), "dicom_listener.tls_certificate",
                         "TLS needs both the certificate and its key", "set tls_certificate and tls_key (PEM files)")
        if get("tls_require_peer_certificate") and ca is None:
            problems.add(where("tls_require_peer_certificate"), "dicom_listener.tls_ca",
                         "mutual TLS needs the CA that signs the consoles' certificates", "set tls_ca (PEM)")
        tls = TlsSettings(cert, key, ca, get("tls_require_peer_certificate"))
    listener = ListenerSettings(
        enabled=enabled, ae_title=get("ae_title"), port=get("port"), bind_address=get("bind_address"),
        allowed_ae_titles=get("allowed_ae_titles"), allowed_hosts=get("allowed_hosts"),
        max_associations=get("max_associations"), max_associations_per_host=get("max_associations_per_host"),
        root=root, completion_grace_s=get("completion_grace_s"),
        min_free_mb=get("min_free_mb"), sop_classes=get("sop_classes"), transfer_syntaxes=get("transfer_syntaxes"),
        tls=tls)
    delivery = DeliverySettings(retry_initial_s=values["delivery.retry_initial_s"],
                                retry_max_s=values["delivery.retry_max_s"], max_age_h=values["delivery.max_age_h"])
    return NodeSettings(listener=listener, destinations=values["destinations"], delivery=delivery)
