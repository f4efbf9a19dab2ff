"""mercure's side of the module contract, played from mercure's own description: a task folder in
(``<SeriesUID>#<file>.dcm`` with ``.tags``, ``task.json`` with ``process.settings``), the real command line run with
the variables mercure sets, and what mercure takes back checked: only ``*.dcm`` results (the DICOM-SEG, the SR when
written) and ``result.json`` with ``__mercure_notification``; exit 0 only for a complete result. The same through the
MONAI Deploy and Holoscan variables, and with a plain folder (``<name>.edgeseg/`` per series). mercure moves a task
whose module exits non-zero to its error folder as a whole (``app/process/process_series.py``): a study task in
which one series was segmented exits 0, with what was skipped or refused in ``result.json``."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from oneshot_helpers import (dispatched, make_read_only, make_writable, mercure_environment, mercure_input,
                             read_result, snapshot)

from edgeseg.cli import main
from edgeseg.errors import EXIT_OK, ConfigError, InvalidSeriesError

pytestmark = pytest.mark.slow

#: the SR writer (runtime/write/sr.py) may not be in this checkout yet; once it is, the SR is dispatched too
HAS_SR = importlib.util.find_spec("edgeseg.runtime.write.sr") is not None


def _run(env: dict[str, str], *args: str, monkeypatch: pytest.MonkeyPatch) -> int:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return main(["-q", "run", *args])


def _expected_roles() -> set[str]:
    return {"dicom_seg", "dicom_sr"} if HAS_SR else {"dicom_seg"}


def test_a_series_task_gives_the_seg_and_sr_and_result_json(tmp_path: Path, demo_series: list[Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    inp = mercure_input(tmp_path / "in", [demo_series], {"precision": "fp32", "outputs": {"preview": False}})
    before = snapshot(inp)
    out = tmp_path / "out"
    out.mkdir()
    assert _run(mercure_environment(inp, out), monkeypatch=monkeypatch) == 0
    assert snapshot(inp) == before  # the input is never modified
    # only what mercure dispatches and stores: *.dcm and result.json, nothing else (no hidden leftovers either)
    files = dispatched(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in files] + ["result.json"])
    modalities = {pydicom.dcmread(p, stop_before_pixels=True).Modality: p for p in files}
    assert set(modalities) == ({"SEG", "SR"} if HAS_SR else {"SEG"})
    seg = pydicom.dcmread(modalities["SEG"], stop_before_pixels=True)
    # mercure's own naming: <SeriesInstanceUID of the object>#<file>.dcm
    assert modalities["SEG"].name.split("#")[0] == seg.SeriesInstanceUID
    source = pydicom.dcmread(demo_series[0], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    result = read_result(out)
    assert result["status"] == "complete" and result["exit_code"] == 0
    assert result["edgeseg"]["layout"] == "mercure" and result["edgeseg"]["engine"] == "mercure"
    assert result["task"]["id"] and result["task"]["uid"] == source.SeriesInstanceUID
    (series,) = result["series"]
    assert series["series_uid"] == source.SeriesInstanceUID and series["description"] == "t1_vibe_tra"
    assert set(series["outputs"]) == _expected_roles()
    assert all((out / name).is_file() for name in series["outputs"].values())
    assert series["run"]["parts"][0]["precision"].startswith("fp32")  # the task's setting was applied
    assert len(series["volumes_ml"]) > 5 and all(v > 0 for v in series["volumes_ml"].values())
    note = result["__mercure_notification"]
    assert set(note) == {"text", "requested"} and "1 of 1 series segmented" in note["text"]
    assert "t1_vibe_tra" in note["text"]


def test_a_refused_series_fails_the_task(tmp_path: Path, mosaic_series: list[Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a Siemens mosaic: nothing to segment: the refusal's own code (mercure moves the task to its error
    folder), nothing dispatched, result.json says why."""
    inp = mercure_input(tmp_path / "in", [mosaic_series])
    out = tmp_path / "out"
    assert _run(mercure_environment(inp, out), monkeypatch=monkeypatch) == InvalidSeriesError.exit_code
    assert dispatched(out) == []
    result = read_result(out)
    assert result["status"] == "failed" and result["exit_code"] == InvalidSeriesError.exit_code
    assert "Siemens mosaic" in result["failed"][0]["message"]
    assert result["failed"][0]["kind"] == "invalid_series"
    assert "Siemens mosaic" in result["__mercure_notification"]["text"]


def test_a_study_task_with_a_good_and_a_refused_series(tmp_path: Path, demo_series: list[Path],
                                                       mosaic_series: list[Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A study-level rule hands every series: the good one is segmented and dispatched, the mosaic refused with its
    reason. Exit 0: mercure moves a task that exits non-zero to its error folder as a whole (its
    ``process_series``), and the good series would never be sent; result.json says "partial"."""
    inp = mercure_input(tmp_path / "in", [demo_series, mosaic_series], {"outputs.preview": False}, uid_type="study")
    out = tmp_path / "out"
    assert _run(mercure_environment(inp, out), monkeypatch=monkeypatch) == EXIT_OK
    result = read_result(out)
    assert result["status"] == "partial" and result["task"]["uid_type"] == "study"
    assert [s["status"] for s in result["series"]] == ["complete"]
    assert len(result["failed"]) == 1 and "Siemens mosaic" in result["failed"][0]["message"]
    assert len(dispatched(out)) == len(_expected_roles())


def test_a_study_task_with_skipped_and_refused_series_delivers_the_good_one(
        tmp_path: Path, demo_series: list[Path], mosaic_series: list[Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: a study task holding a DTI and a localizer (skipped by the default selection rules), a mosaic
    (refused) and the T1: the T1's SEG (and SR) are dispatched and the run ends as mercure treats success (exit 0);
    result.json names the skipped series with their rule and the refused one with its reason."""
    from helpers.series_cases import canon_dti, siemens_localizer

    dti = canon_dti(tmp_path / "dti")
    scout = siemens_localizer(tmp_path / "scout")
    inp = mercure_input(tmp_path / "in", [demo_series, dti, scout, mosaic_series], {"outputs.preview": False},
                        uid_type="study")
    out = tmp_path / "out"
    assert _run(mercure_environment(inp, out), monkeypatch=monkeypatch) == EXIT_OK
    result = read_result(out)
    assert result["status"] == "partial" and result["exit_code"] == 0
    assert [s["status"] for s in result["series"]] == ["complete"]
    assert [s["description"] for s in result["series"]] == ["t1_vibe_tra"]
    assert len(result["failed"]) == 1 and "Siemens mosaic" in result["failed"][0]["message"]
    assert {s["description"]: s["rule"] for s in result["skipped"]} == {
        "DTI_MPG12 b1000": "selection.exclude_image_types", "localizer": "selection.exclude_descriptions"}
    assert len(dispatched(out)) == len(_expected_roles())
    series_uid = str(pydicom.dcmread(demo_series[0], stop_before_pixels=True).SeriesInstanceUID)
    for path in dispatched(out):  # only the T1's results: each references the T1
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        refs = {str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])}
        assert not refs or refs == {series_uid}
    text = result["__mercure_notification"]["text"]
    assert "skipped by rule selection.exclude_image_types: DTI_MPG12 b1000" in text and "exit status" not in text


def test_a_task_of_only_skipped_series_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule that hands a localizer alone: nothing to segment is not a failure (exit 0, status "skipped"), nothing
    dispatched, the rule named in result.json."""
    from helpers.series_cases import siemens_localizer

    inp = mercure_input(tmp_path / "in", [siemens_localizer(tmp_path / "scout")])
    out = tmp_path / "out"
    assert _run(mercure_environment(inp, out), monkeypatch=monkeypatch) == EXIT_OK
    result = read_result(out)
    assert result["status"] == "skipped" and result["series"] == [] and result["failed"] == []
    assert [s["rule"] for s in result["skipped"]] == ["selection.exclude_descriptions"]
    assert dispatched(out) == []


def test_bad_settings_fail_before_any_work(tmp_path: Path, demo_series: list[Path],
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    inp = mercure_input(tmp_path / "in", [demo_series], {"outputs": {"preveiw": False}, "threads": 0})
    out = tmp_path / "out"
    assert _run(mercure_environment(inp, out), monkeypatch=monkeypatch) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert "task.json: process.settings.outputs.preveiw: unknown key; did you mean preview?" in err
    assert "task.json: process.settings.threads: must be >= 1" in err
    assert dispatched(out) == []
    result = read_result(out)
    assert result["status"] == "failed" and result["exit_code"] == ConfigError.exit_code
    assert "process.settings.outputs.preveiw" in result["failed"][0]["message"]


def test_a_variant_the_bundle_lacks_is_a_settings_error(tmp_path: Path, demo_series: list[Path],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    inp = mercure_input(tmp_path / "in", [demo_series], {"variant": "1.5mm"})
    assert _run(mercure_environment(inp, tmp_path / "out"), monkeypatch=monkeypatch) == ConfigError.exit_code
    assert "process.settings.variant: the bundle has no variant '1.5mm'" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["MONAI", "HOLOSCAN"])
def test_the_same_task_through_the_monai_and_holoscan_variables(tmp_path: Path, demo_series: list[Path],
                                                                monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    """A MONAI application package sees only MONAI_*/HOLOSCAN_* (mercure sets them for MAPs too): same result."""
    inp = mercure_input(tmp_path / "in", [demo_series], {"outputs": {"preview": False, "statistics": False}})
    out = tmp_path / "out"
    env = {k: v for k, v in mercure_environment(inp, out).items() if k.startswith(engine)}
    assert len(env) == 2
    assert _run(env, "--bundle", "demo", monkeypatch=monkeypatch) == 0  # the demo only when named
    result = read_result(out)
    assert result["input"]["from"] in ("MONAI_INPUTPATH", "HOLOSCAN_INPUT_PATH")
    assert result["status"] == "complete" and len(dispatched(out)) == len(_expected_roles())


def test_a_plain_folder_gets_result_folders(tmp_path: Path, demo_series: list[Path], real_mri: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No task.json, folders from the command line (a vendor platform, a script): one <name>.edgeseg/ per series in
    the output, as `edgeseg segment` writes beside a series, and result.json; a NIfTI beside the DICOM series is a
    series too. (A MONAI package's host gets the ``map`` layout: tests/oneshot/test_map_package.py.)"""
    import shutil

    inp = tmp_path / "in"
    shutil.copytree(demo_series[0].parent, inp / "dicom")
    shutil.copy2(real_mri, inp / real_mri.name)
    before = snapshot(inp)
    out = tmp_path / "out"
    assert _run({}, "--input", str(inp), "--output", str(out), "--bundle", "demo", "--no-preview",
                monkeypatch=monkeypatch) == 0
    assert snapshot(inp) == before
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2 and all(name.endswith(".edgeseg") for name in folders)
    result = read_result(out)
    assert result["edgeseg"]["layout"] == "folders" and "__mercure_notification" not in result
    for series in result["series"]:
        assert (out / series["outputs"]["labelmap"]).is_file() and "preview" not in series["outputs"]
    dicom = next(s for s in result["series"] if "dicom_seg" in s["outputs"])
    assert dicom["outputs"]["dicom_seg"].endswith("/seg.dcm")


def test_module_persistence_dir_keeps_the_compiled_model(tmp_path: Path, demo_series: list[Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With a persistence folder the first task fills the OpenVINO model cache there and the second reuses it
    (no new cache entry); seconds are measured by benchmarks/oneshot_cold_start.py, not here."""
    persistence = tmp_path / "persistence"
    persistence.mkdir()
    inp = mercure_input(tmp_path / "in", [demo_series], {"outputs": {"preview": False}})
    assert _run(mercure_environment(inp, tmp_path / "out1", persistence), monkeypatch=monkeypatch) == 0
    cache = persistence / "edgeseg" / "model_cache"
    first = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert first, "no compiled model was cached in MODULE_PERSISTENCE_DIR"
    # a new task is a new process and builds a new segmenter: nothing compiled in memory
    assert _run(mercure_environment(inp, tmp_path / "out2", persistence), monkeypatch=monkeypatch) == 0
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == first
    assert read_result(tmp_path / "out2")["status"] == "complete"


def test_no_persistence_folder_no_cache_written(tmp_path: Path, demo_series: list[Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MODULE_PERSISTENCE_DIR (and no --cache-dir) nothing is written outside the output folder: HOME is a
    fresh folder here and stays empty."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    inp = mercure_input(tmp_path / "in", [demo_series], {"outputs": {"preview": False}})
    assert _run(mercure_environment(inp, tmp_path / "out"), monkeypatch=monkeypatch) == 0
    assert list(home.rglob("*")) == []


def test_a_read_only_input_as_the_real_command(tmp_path: Path, demo_series: list[Path],
                                               clean_env: dict[str, str]) -> None:
    """The real command line in its own process, as mercure's container runs it, on an input mounted read-only:
    files 0444, folders 0555; the input is compared byte for byte afterwards. (As root, which ignores those modes,
    the byte comparison is what proves nothing was written; as any other user the modes hold as well.)"""
    inp = mercure_input(tmp_path / "in", [demo_series], {"outputs": {"preview": False}})
    out = tmp_path / "out"
    before = snapshot(inp)
    make_read_only(inp)
    env = {**clean_env, **mercure_environment(inp, out)}
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeseg", "-q", "run"], env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        if os.name == "posix" and os.geteuid() != 0:
            with pytest.raises(PermissionError):
                (inp / "probe").write_text("x")
    finally:
        make_writable(inp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {k: v[1:] for k, v in snapshot(inp).items()} == {k: v[1:] for k, v in before.items()}
    assert read_result(out)["status"] == "complete"
    assert len(dispatched(out)) == len(_expected_roles())
