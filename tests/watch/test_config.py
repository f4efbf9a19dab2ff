"""watch_config.yaml: validation names the key path and the fix; precedence command line > env > file."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.demo import demo_bundle_path
from edgeseg.errors import ConfigError
from edgeseg.runtime.watch.config import ObserverKind, env_name, load_config

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "bundle").mkdir(exist_ok=True)
    path = tmp_path / "cfg" / "watch_config.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


BASE = "roots: [../in]\nbundle: ../bundle\nstate_dir: ../state\n"


def test_minimal_file_resolves_relative_paths_against_the_file(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE), env={})
    assert cfg.roots == (tmp_path / "in",)
    assert cfg.bundle == tmp_path / "bundle"
    assert cfg.state_dir == tmp_path / "state" and cfg.state_dir.is_dir()
    assert cfg.log_dir == tmp_path / "state" / "logs" and cfg.log_dir.is_dir()
    assert cfg.quiet_period_s == 60 and cfg.max_attempts == 3 and cfg.max_concurrent_series == 1
    assert cfg.time_budget_s == 120 and cfg.observer is ObserverKind.NATIVE


def test_unknown_nested_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "outputs:\n  preveiw: false\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    msg = str(err.value)
    assert "outputs.preveiw: unknown key; did you mean preview?" in msg
    assert str(path) in msg and "Fix:" in msg


def test_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"quiet_periode_s: unknown key; did you mean quiet_period_s\?"):
        load_config(_write(tmp_path, BASE + "quiet_periode_s: 3\n"), env={})


@pytest.mark.parametrize("line, expected", [
    ("quiet_period_s: soon", "quiet_period_s: must be a number of seconds"),
    ("quiet_period_s: 0", "quiet_period_s: must be > 0"),
    ("max_attempts: true", "max_attempts: must be a whole number"),
    ("threads: 2.5", "threads: must be a whole number"),
    ("observer: inotify", "observer: must be one of native, polling"),
    ("precision: int4", "precision: must be one of auto, int8, fp16, fp32"),
    ("device: TPU", "device: 'TPU' is not a device edgeseg runs on"),
    ("outputs: yes", "outputs: must be a mapping"),
    ("outputs:\n  preview: 1", "outputs.preview: must be true or false"),
    ("include: 3", "include: must be a list of glob patterns"),
])
def test_wrong_types_name_the_key(tmp_path: Path, line: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("?", r"\?")):
        load_config(_write(tmp_path, BASE + line + "\n"), env={})


@pytest.mark.parametrize("device", ["NPU", "HETERO:CPU", "MULTI:CPU", "AUTO:NPU,CPU"])
def test_devices_the_engine_refuses_are_refused_with_their_key_path(tmp_path: Path, device: str) -> None:
    """OpenVINO knows these devices, but edgeseg's engine does not run on them: refused at start (the engine's own
    rule), not at every series."""
    path = _write(tmp_path, BASE + f"device: {device}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert f"{path}: device: '{device}' is not a device edgeseg runs on. Fix: use CPU, GPU" in str(err.value)
    with pytest.raises(ConfigError, match=f"EDGESEG_DEVICE: device: '{device}' is not a device edgeseg runs on"):
        load_config(_write(tmp_path, BASE), env={env_name("device"): device})


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, BASE + "quiet_period_s: x\nmax_attempts: 0\nfoo: 1\n"), env={})
    msg = str(err.value)
    assert "and 2 more problem(s)" in msg
    for key in ("quiet_period_s", "max_attempts", "foo"):
        assert f": {key}: " in msg


def test_missing_root_and_bundle_fail_with_the_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "roots: [../nowhere]\nbundle: ../no_bundle\nstate_dir: ../state\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    msg = str(err.value)
    assert f"roots[0]: {tmp_path / 'nowhere'} does not exist" in msg
    assert f"bundle: {tmp_path / 'no_bundle'} does not exist" in msg
    cfg = load_config(path, env={}, check_paths=False)  # status/doctor read it without checking
    assert cfg.roots == (tmp_path / "nowhere",)


def test_no_roots_at_all(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="roots: no folder to watch.*--root"):
        load_config(None, {"bundle": str(tmp_path)}, env={})


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(_write(tmp_path, "roots: [a]\nbundle: [unclosed\n"), env={})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"), env={})


def test_precedence_command_line_over_environment_over_file(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "quiet_period_s: 30\ndevice: GPU\nmax_attempts: 5\noutputs:\n  preview: true\n")
    other = tmp_path / "other"
    other.mkdir()
    env = {env_name("quiet_period_s"): "20", env_name("device"): "auto", env_name("outputs.preview"): "false",
           env_name("roots"): str(other), "EDGESEG_SOMETHING_ELSE": "ignored"}
    cfg = load_config(path, {"quiet_period_s": 1.5, "max_attempts": None}, env=env)
    assert cfg.quiet_period_s == 1.5  # command line wins
    assert cfg.device == "AUTO"  # environment beats the file (normalized to upper case)
    assert cfg.outputs.preview is False
    assert cfg.roots == (other,)
    assert cfg.max_attempts == 5  # an unset flag (None) falls through to the file


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="EDGESEG_MAX_ATTEMPTS: max_attempts: must be a whole number"):
        load_config(_write(tmp_path, BASE), env={"EDGESEG_MAX_ATTEMPTS": "many"})


def test_command_line_roots_and_null_budget(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    cfg = load_config(None, {"roots": [str(tmp_path / "a")], "bundle": str(tmp_path), "time_budget_s": None,
                             "state_dir": str(tmp_path / "s")}, env={"EDGESEG_TIME_BUDGET_S": "null"})
    assert cfg.time_budget_s is None
    assert cfg.roots == (tmp_path / "a",)


def test_demo_keyword_means_the_packaged_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeseg.demo

    text = "roots: [../in]\nbundle: demo\nstate_dir: ../s\n"
    cfg = load_config(_write(tmp_path, text), env={})
    assert cfg.bundle == demo_bundle_path() and (cfg.bundle / "bundle.json").is_file()
    # a build without the demo bundle: the keyword still resolves, and checking the paths says what is missing
    missing = tmp_path / "no_demo_bundle"
    monkeypatch.setattr(edgeseg.demo, "BUNDLE_DIR", missing)
    assert load_config(_write(tmp_path, text), env={}, check_paths=False).bundle == missing
    with pytest.raises(ConfigError, match="'demo' means the packaged demo bundle, which is not in this build"):
        load_config(_write(tmp_path, text), env={})


def test_the_documented_example_file_is_valid_and_complete() -> None:
    from edgeseg.runtime.watch.config import KEYS

    text = (REPO / "watch_config.yaml").read_text(encoding="utf-8")
    cfg = load_config(REPO / "watch_config.yaml", env={}, check_paths=False)
    assert cfg.roots == (REPO / "incoming",)
    for key in KEYS:
        assert f"{key.split('.')[-1]}:" in text, f"{key} is not documented in watch_config.yaml"


def test_segment_options_carry_the_settings(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE + "device: gpu\nthreads: 3\nprecision: fp32\ntime_budget_s: 50\n"
                             "outputs:\n  dicom_seg: false\n"), env={})
    opts = cfg.segment_options("fast", 0.8)
    assert (opts.device, opts.threads, opts.precision, opts.time_budget_s, opts.variant) == ("GPU", 3, "fp32", 50,
                                                                                          "fast")
    assert opts.outputs.dicom_seg is False and opts.outputs.preview is True
    assert opts.tile_step_size == 0.8  # the planner's step override reaches the segmenter
    assert opts.cache_dir == tmp_path / "state" / "model_cache"
    default = cfg.segment_options()
    assert default.variant is None and default.tile_step_size is None  # no plan: each part's own variant and step


@pytest.mark.parametrize("root", ["/", "/etc", "/usr", "/var", "HOME", "STATE_PARENT", "STATE"])
def test_system_folders_are_refused_as_roots_at_start(tmp_path: Path, root: str) -> None:
    """``roots: [/]`` once wrote 898 error files across a system in 25 s (issue 19): a file-system root, a system
    folder, the home folder, the state folder or one of its parents is refused at start with its key path."""
    state = tmp_path / "deep" / "state"
    value = {"HOME": str(Path.home()), "STATE_PARENT": str(tmp_path / "deep"), "STATE": str(state)}.get(root, root)
    path = _write(tmp_path, f"roots: ['{value}']\nbundle: ../bundle\nstate_dir: {state}\n")
    with pytest.raises(ConfigError, match=r"roots\[0\]: .* (system folder|root of a file system|home folder|holds the "
                                          r"watcher's own state folder).*Fix: name the export folder"):
        load_config(path, env={})


def test_a_folder_inside_a_system_folder_is_a_valid_root(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE), env={})
    assert cfg.roots == ((tmp_path / "in").resolve(),) or cfg.roots == (tmp_path / "in",)
