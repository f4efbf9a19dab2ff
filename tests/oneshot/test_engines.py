"""Input and output folders of a one-shot run: the command line wins, then mercure's, MONAI Deploy's and Holoscan's
variables; clear errors when none is given, the input is missing, or the output is (inside) the input."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.errors import BundleError, ConfigError
from edgeseg.runtime.oneshot.engines import resolve_bundle, resolve_folders


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("cli_in", "mercure_in", "monai_in", "holoscan_in"):
        out[name] = tmp_path / name
        out[name].mkdir()
    return out


@pytest.mark.parametrize("variables, expected_in, expected_from", [
    ({"MERCURE_IN_DIR": "mercure_in", "MONAI_INPUTPATH": "monai_in", "HOLOSCAN_INPUT_PATH": "holoscan_in"},
     "mercure_in", "MERCURE_IN_DIR"),
    ({"MONAI_INPUTPATH": "monai_in", "HOLOSCAN_INPUT_PATH": "holoscan_in"}, "monai_in", "MONAI_INPUTPATH"),
    ({"HOLOSCAN_INPUT_PATH": "holoscan_in"}, "holoscan_in", "HOLOSCAN_INPUT_PATH"),
])
def test_engine_variables_in_order(folders: dict[str, Path], tmp_path: Path, variables: dict[str, str],
                                   expected_in: str, expected_from: str) -> None:
    env = {k: str(tmp_path / v) for k, v in variables.items()}
    env[expected_from.replace("IN_DIR", "OUT_DIR").replace("INPUTPATH", "OUTPUTPATH").replace("INPUT_PATH",
                                                                                               "OUTPUT_PATH")] = \
        str(tmp_path / "out")
    got = resolve_folders(env=env)
    assert got.input == folders[expected_in] and got.input_from == expected_from
    assert got.output == tmp_path / "out" and got.output.is_dir()  # created
    assert got.engine == {"MERCURE_IN_DIR": "mercure", "MONAI_INPUTPATH": "MONAI Deploy",
                          "HOLOSCAN_INPUT_PATH": "Holoscan"}[expected_from]


def test_the_command_line_wins(folders: dict[str, Path], tmp_path: Path) -> None:
    env = {"MERCURE_IN_DIR": str(folders["mercure_in"]), "MERCURE_OUT_DIR": str(tmp_path / "mercure_out")}
    got = resolve_folders(folders["cli_in"], tmp_path / "cli_out", env=env)
    assert (got.input, got.input_from, got.output_from) == (folders["cli_in"], "--input", "--output")
    assert got.engine == "command line"
    # each folder separately: the output from the engine when only --input is given
    got = resolve_folders(folders["cli_in"], None, env=env)
    assert got.output == tmp_path / "mercure_out" and got.output_from == "MERCURE_OUT_DIR"


def test_no_folders_given_names_the_options_and_variables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No input folder: give --input DIR.*MERCURE_IN_DIR / MONAI_INPUTPATH / "
                                          "HOLOSCAN_INPUT_PATH"):
        resolve_folders(env={})
    with pytest.raises(ConfigError, match="No output folder: give --output DIR.*MERCURE_OUT_DIR"):
        resolve_folders(tmp_path, env={})


def test_a_missing_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"MERCURE_IN_DIR: .*nope does not exist"):
        resolve_folders(env={"MERCURE_IN_DIR": str(tmp_path / "nope"), "MERCURE_OUT_DIR": str(tmp_path / "out")})


@pytest.mark.parametrize("output", [".", "results", "a/b"])
def test_the_output_may_not_be_inside_the_input(tmp_path: Path, output: str) -> None:
    with pytest.raises(ConfigError, match="--output: .* (is the input folder|is inside the input folder).*Fix: give "
                                          "an output folder outside the input"):
        resolve_folders(tmp_path, tmp_path / output, env={})
    assert not (tmp_path / "results").exists()


def test_an_output_through_a_link_into_the_input_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "in")
    with pytest.raises(ConfigError, match="inside the input folder|is the input folder"):
        resolve_folders(tmp_path / "in", tmp_path / "link" / "out", env={})


def test_bundle_precedence(tmp_path: Path) -> None:
    model = tmp_path / "models"
    model.mkdir()
    with pytest.raises(ConfigError, match="No model bundle named.*'demo' for the packaged demo model"):
        resolve_bundle(None, env={})  # never the demo unless named
    with pytest.raises(BundleError, match=r"HOLOSCAN_MODEL_PATH: the model folder .*models holds no bundle.json"):
        resolve_bundle(None, env={"HOLOSCAN_MODEL_PATH": str(model)})
    with pytest.raises(BundleError, match=r"MONAI_MODELPATH: the model folder .*nope does not exist"):
        resolve_bundle(None, env={"MONAI_MODELPATH": str(tmp_path / "nope")})
    assert resolve_bundle("demo", env={"HOLOSCAN_MODEL_PATH": str(model)}) == ("demo", "--bundle")
    (model / "bundle.json").write_text("{}")
    assert resolve_bundle(None, env={"HOLOSCAN_MODEL_PATH": str(model)}) == (str(model), "HOLOSCAN_MODEL_PATH")
    assert resolve_bundle(None, env={"MONAI_MODELPATH": str(model)}) == (str(model), "MONAI_MODELPATH")
    assert resolve_bundle(None, env={"EDGESEG_BUNDLE": "/b", "HOLOSCAN_MODEL_PATH": str(model)}) == \
        ("/b", "EDGESEG_BUNDLE")
    assert resolve_bundle("/c", env={"EDGESEG_BUNDLE": "/b"}) == ("/c", "--bundle")
