"""``edgeseg watch | status | doctor | demo`` through the command line (the fake segmenter injected into the
watcher the commands build: ``helpers.fake_segmenter.use_fake_watcher``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.fake_segmenter import use_fake_watcher
from watch_helpers import results, write_series

from edgeseg.cli import main


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "bundle").mkdir()
    path = tmp_path / "watch_config.yaml"
    path.write_text("roots: [in]\nbundle: bundle\nquiet_period_s: 60\nstate_dir: state\ntime_budget_s: null\n",
                    encoding="utf-8")
    return path


def test_watch_once_with_command_line_overrides(config_file: Path, tmp_path: Path, monkeypatch, real_mri) -> None:
    use_fake_watcher(monkeypatch)
    other = tmp_path / "other_root"
    write_series(other / "exam", 3)
    shutil.copyfile(real_mri, other / "case.nii.gz")
    # the file says 60 s of quiet and another root: the flags win, so this returns within seconds
    code = main(["-q", "watch", "--config", str(config_file), "--root", str(other), "--quiet-period", "0.3",
                 "--once"])
    assert code == 0
    assert len(results(other)) == 2 and results(tmp_path / "in") == []
    assert (tmp_path / "state" / "logs" / "watch.log").is_file()


def test_watch_bad_config_exits_2_with_the_key(config_file: Path, capsys) -> None:
    config_file.write_text(config_file.read_text() + "outputs:\n  preveiw: true\n")
    assert main(["watch", "--config", str(config_file), "--once"]) == 2
    assert "outputs.preveiw: unknown key; did you mean preview?" in capsys.readouterr().err


def test_status_shows_counts_and_recent_results(config_file: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    assert main(["status", "--config", str(config_file)]) == 1
    assert "has not run" in capsys.readouterr().out
    use_fake_watcher(monkeypatch)
    write_series(tmp_path / "in" / "exam", 3, description="abdomen t1")
    (tmp_path / "in" / "bad").mkdir()
    (tmp_path / "in" / "bad" / "empty").write_bytes(b"")
    assert main(["-q", "watch", "--config", str(config_file), "--quiet-period", "0.3", "--once"]) == 1
    capsys.readouterr()
    assert main(["status", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "watcher: stopped" in out
    assert "1 done" in out and "1 failed" in out
    assert "abdomen_t1" in out and "empty file" in out
    assert "STATE" in out and "TRIES" in out
    assert main(["status", "--config", str(config_file), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["done"] == 1 and len(data["recent"]) == 2


def test_status_marks_a_series_that_ran_over_its_budget(config_file: Path, tmp_path: Path, monkeypatch,
                                                        capsys) -> None:
    use_fake_watcher(monkeypatch)
    config_file.write_text(config_file.read_text().replace("time_budget_s: null", "time_budget_s: 0.000001"))
    write_series(tmp_path / "in" / "exam", 3, description="abdomen t1")
    assert main(["-q", "watch", "--config", str(config_file), "--quiet-period", "0.3", "--once"]) == 0
    capsys.readouterr()
    assert main(["status", "--config", str(config_file)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "abdomen_t1" in line)
    assert "OVER BUDGET 1e-06" in row


def test_doctor_reports_each_check(config_file: Path, capsys) -> None:
    code = main(["doctor", "--config", str(config_file)])
    out = capsys.readouterr().out
    assert code == 1  # the dummy bundle is not a bundle
    lines = out.splitlines()
    assert any(line.startswith("OK    roots[0]") for line in lines)
    assert any(line.startswith("OK    state_dir") for line in lines)
    assert any(line.startswith("FAIL  bundle") and "bundle.json" in line for line in lines)
    # the configured default device is CPU, which every OpenVINO installation has
    assert any(line.startswith("OK    openvino devices: available: ") and "CPU" in line
               and line.endswith("configured CPU") for line in lines), out
    assert any(line.startswith("SKIP  time budget") for line in lines)


def test_doctor_shows_the_retention_policy_and_the_disk_forecast(config_file: Path, tmp_path: Path, capsys) -> None:
    """Issue 20: the policy in words, what was removed, and per root the free space, the arrival rate and when the
    watermark is reached at that rate."""
    from edgeseg.runtime.watch.config import load_config
    from edgeseg.runtime.watch.store import JobStore

    with config_file.open("a", encoding="utf-8") as fh:
        fh.write("retention:\n  received_days: 3\n  results_days: null\n  min_free_mb: 100\n")
    write_series(tmp_path / "in" / "exam", 4)
    config = load_config(config_file, check_paths=False)
    with JobStore(config.store_path) as store:
        store.mark_complete("k", "dicom", tmp_path / "in" / "exam", "exam", "fp", 4, "1.2.3")
        store.mark_running("k")
        store.mark_done("k", None, 1.0)
    main(["doctor", "--config", str(config_file)])
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "retention:" in line]
    assert line.startswith("OK    retention: received images: 3 days after delivery; results: kept; watermark: 100 "
                           "MB free, oldest delivered first; export folders' images: kept; 0 removal(s) recorded")
    assert f"Disk forecast: {tmp_path / 'in'}: " in line and "MB/day arrived over the last 7 days" in line
    assert "the watermark is reached in about" in line


def test_doctor_fails_the_device_check_when_the_device_is_absent(config_file: Path, monkeypatch, capsys) -> None:
    import edgeseg.runtime.infer.engine as engine

    config_file.write_text(config_file.read_text() + "device: GPU\n", encoding="utf-8")
    monkeypatch.setattr(engine, "available_devices", lambda: ["CPU"])
    assert main(["doctor", "--config", str(config_file)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("FAIL  openvino devices: configured device GPU is not available (available: CPU)")
               for line in lines), lines
    monkeypatch.setattr(engine, "available_devices", lambda: [])
    assert main(["doctor", "--config", str(config_file)]) == 1
    assert any(line.startswith("FAIL  openvino devices: OpenVINO finds no device")
               for line in capsys.readouterr().out.splitlines())


def test_doctor_on_a_broken_config_fails_first_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("roots: [x]\nfoo: 1\n")
    assert main(["doctor", "--config", str(bad)]) == 1
    assert capsys.readouterr().out.startswith("FAIL  config")


@pytest.mark.slow
def test_demo_with_the_fake_segmenter(monkeypatch, capsys) -> None:
    use_fake_watcher(monkeypatch)
    code = main(["-q", "demo", "--timeout", "60", "--quiet-period", "0.5"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "DICOM series of 20 slices" in out
    assert "Results in" in out and "manifest" in out
    assert "removed on exit" in out


def test_demo_without_the_bundle_says_so(monkeypatch, capsys, tmp_path: Path) -> None:
    """A build without the packaged demo bundle (the bundle path is pointed at an empty folder)."""
    import edgeseg.demo

    missing = tmp_path / "no_bundle"
    monkeypatch.setattr(edgeseg.demo, "BUNDLE_DIR", missing)
    assert main(["demo"]) == 5
    out = capsys.readouterr().out
    assert "demo bundle is not in this build" in out and str(missing) in out


def test_demo_without_the_mri_says_so(monkeypatch, capsys, tmp_path: Path) -> None:
    """A build without the packaged demo MRI: no fallback to a development copy, the error names the path."""
    import edgeseg.demo
    from edgeseg.errors import BundleError

    missing = tmp_path / "no_mri.nii.gz"
    monkeypatch.setattr(edgeseg.demo, "MRI_FILE", missing)
    use_fake_watcher(monkeypatch)
    assert main(["demo"]) == BundleError.exit_code
    assert f"The demo MRI is missing from this installation ({missing})" in capsys.readouterr().err
