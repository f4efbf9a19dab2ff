"""The one device rule (runtime/infer/devices.py): which devices edgeseg runs on and whether one is on this PC,
shared by the watcher's configuration, ``edgeseg doctor`` and the engine."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.errors import ConfigError
from edgeseg.runtime.infer.devices import device_present, device_problem, normalize_device

SUPPORTED = ["CPU", "cpu", " GPU ", "GPU.1", "AUTO", "auto:gpu,cpu", "AUTO:GPU.0,CPU"]
REFUSED = ["NPU", "NPU.0", "HETERO:CPU", "HETERO:GPU,CPU", "MULTI:CPU", "MULTI:GPU,CPU", "AUTO:NPU", "AUTO:",
           "BATCH:GPU", "TPU", "GPU.", "GPU.x", "CPU.1", "", 3]


@pytest.mark.parametrize("name", SUPPORTED)
def test_cpu_igpu_and_auto_are_supported(name: str) -> None:
    assert device_problem(name) is None


@pytest.mark.parametrize("name", REFUSED)
def test_other_openvino_devices_are_refused(name: object) -> None:
    assert device_problem(name) is not None


@pytest.mark.parametrize("name, available, present", [
    ("CPU", ["CPU"], True),
    ("GPU", ["CPU"], False),
    ("GPU", ["CPU", "GPU"], True),
    ("GPU", ["CPU", "GPU.0", "GPU.1"], True),
    ("GPU.1", ["CPU", "GPU.0", "GPU.1"], True),
    ("GPU.1", ["CPU", "GPU"], False),
    ("GPU.0", ["CPU", "GPU"], True),  # a single iGPU is listed as "GPU" and answers to "GPU.0"
    ("AUTO", ["CPU"], True),
    ("AUTO", [], False),
    ("AUTO:GPU,CPU", ["CPU"], True),
    ("AUTO:GPU", ["CPU"], False),
    ("gpu", ["GPU"], True),
])
def test_presence(name: str, available: list[str], present: bool) -> None:
    assert device_present(name, available) is present


@pytest.mark.parametrize("name", SUPPORTED + REFUSED)
def test_config_and_engine_apply_the_same_rule(name: object, tmp_path: Path) -> None:
    """What the watcher's configuration refuses (with its key path), the engine refuses with the same reason;
    what it accepts reaches the engine in the engine's spelling."""
    from edgeseg.runtime.infer.engine import compile_part
    from edgeseg.runtime.watch.config import load_config

    problem = device_problem(name)
    values = {"roots": [str(tmp_path)], "bundle": "demo", "device": name}
    if problem is None:
        config = load_config(None, values, env={}, check_paths=False)
        assert config.device == normalize_device(str(name))
        return
    with pytest.raises(ConfigError) as refused:
        load_config(None, values, env={}, check_paths=False)
    assert f"--device: device: {problem}" in str(refused.value)
    with pytest.raises(ConfigError) as engine_refused:  # before the bundle is looked at
        compile_part(None, None, name)  # type: ignore[arg-type]
    assert problem in str(engine_refused.value)


def test_engine_refuses_a_device_this_pc_does_not_have(monkeypatch: pytest.MonkeyPatch) -> None:
    """An absent device fails the same way every time: a ConfigError, which the watcher does not retry."""
    from edgeseg.runtime.infer import engine

    class FakeCore:
        available_devices = ["CPU"]

    monkeypatch.setattr(engine, "core", lambda: FakeCore())
    with pytest.raises(ConfigError, match=r"Device GPU\.1 is not on this PC \(OpenVINO sees: CPU\)"):
        engine.compile_part(None, None, "gpu.1")  # type: ignore[arg-type]
