"""mercure's ``process.settings`` (and the command line over them) validated like watch_config.yaml: the same types,
checks and "where: key: problem. Fix: ..." lines; unknown keys are errors with a did-you-mean."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from oneshot_helpers import task_json

from edgeseg.errors import ConfigError
from edgeseg.runtime.oneshot.mercure import read_task, settings_of
from edgeseg.runtime.oneshot.settings import SETTINGS_KEYS, check_variant, settings_from
from edgeseg.runtime.watch.config import KEYS


def _task(tmp_path: Path, settings: object) -> Path:
    data = task_json("1.2.3", {})
    data["process"]["settings"] = settings
    (tmp_path / "task.json").write_text(json.dumps(data))
    return tmp_path


def test_settings_nested_and_dotted(tmp_path: Path) -> None:
    s = settings_of(read_task(_task(tmp_path, {
        "variant": "3mm", "precision": "FP32", "threads": 2, "time_budget_s": 30, "time_ceiling_s": 120,
        "echoes": "first", "outputs": {"dicom_sr": False, "seg_type": "binary"}, "outputs.preview": False})))
    assert (s.variant, s.precision, s.threads, s.time_budget_s, s.time_ceiling_s, s.echoes) == \
        ("3mm", "fp32", 2, 30.0, 120.0, "first")
    assert (s.outputs.dicom_sr, s.outputs.seg_type, s.outputs.preview, s.outputs.dicom_seg) == \
        (False, "binary", False, True)
    assert s.where("variant") == f"{tmp_path / 'task.json'}: process.settings.variant"


def test_defaults_without_settings(tmp_path: Path) -> None:
    task = read_task(_task(tmp_path, {}))
    s = settings_of(task)
    assert (s.variant, s.precision, s.device, s.time_budget_s, s.time_ceiling_s, s.echoes) == \
        (None, "auto", "CPU", None, None, "all")
    assert task.id and task.uid == "1.2.3" and task.uid_type == "series" and task.module_name == "edgeseg"


def test_every_accepted_key_is_the_watchers_but_variant() -> None:
    assert set(SETTINGS_KEYS) - set(KEYS) == {"variant"}


@pytest.mark.parametrize("settings, message", [
    ({"outputs": {"preveiw": False}},
     r"task.json: process.settings.outputs.preveiw: unknown key; did you mean preview\? Fix: correct or remove it"),
    ({"precison": "fp32"}, r"task.json: process.settings.precison: unknown key; did you mean precision\?"),
    ({"bundle": "/etc"}, r"task.json: process.settings.bundle: unknown key\. Fix"),
    ({"precision": "int4"}, r"task.json: process.settings.precision: must be one of auto, int8, fp16, fp32"),
    ({"threads": 0}, r"task.json: process.settings.threads: must be >= 1, got 0"),
    ({"threads": "two"}, r"task.json: process.settings.threads: must be a whole number, got 'two'"),
    ({"outputs": {"dicom_seg": "yes"}}, r"process.settings.outputs.dicom_seg: must be true or false"),
    ({"outputs": False}, r"process.settings.outputs: must be a mapping of"),
    ({"time_budget_s": -1}, r"process.settings.time_budget_s: must be > 0"),
    ({"variant": ""}, r"process.settings.variant: must be the name of a bundle variant"),
    ({"time_budget_s": 60, "time_ceiling_s": 30}, r"time_ceiling_s: 30 s is below time_budget_s \(60 s\)"),
    ([1, 2], r"process.settings: must be an object of settings"),
])
def test_bad_settings_are_config_errors_with_the_key_path(tmp_path: Path, settings: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_of(read_task(_task(tmp_path, settings)))


def test_every_problem_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        settings_of(read_task(_task(tmp_path, {"precison": "fp32", "threads": 0})))
    text = str(info.value)
    assert text.startswith("Invalid module settings (and 1 more problem(s) below):")
    assert "process.settings.precison" in text and "process.settings.threads" in text


def test_the_command_line_wins_over_the_task(tmp_path: Path) -> None:
    task = read_task(_task(tmp_path, {"precision": "int8", "outputs": {"preview": False}}))
    s = settings_from([(task.settings, str(task.path), "process.settings."),
                       ({"precision": "fp32", "outputs.preview": None}, "command line", "")])
    assert s.precision == "fp32" and s.origins["precision"] == "command line: precision"
    assert s.outputs.preview is False  # an unset flag falls through


def test_a_variant_the_bundle_lacks(tmp_path: Path) -> None:
    s = settings_of(read_task(_task(tmp_path, {"variant": "3 mm"})))
    with pytest.raises(ConfigError, match=r"task.json: process.settings.variant: the bundle has no variant '3 mm'; "
                                          r"did you mean 3mm\? Fix: use one of 3mm, 1.5mm"):
        check_variant(s, ["3mm", "1.5mm"])


@pytest.mark.parametrize("text, message", [
    ("not json", "not a readable JSON task file"),
    ("[]", "the top level must be mercure's Task object"),
    ('{"id": "x"}', "info: missing"),
    ('{"id": "x", "info": {}, "process": [{"settings": {}}, {"settings": {}}]}', "a list of 2 processing steps"),
])
def test_a_task_file_that_is_not_mercures(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "task.json").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_task(tmp_path)


def test_a_list_of_one_step_is_that_step(tmp_path: Path) -> None:
    data = task_json("1.2.3", {"precision": "fp32"})
    data["process"] = [data["process"]]
    (tmp_path / "task.json").write_text(json.dumps(data))
    assert settings_of(read_task(tmp_path)).precision == "fp32"
