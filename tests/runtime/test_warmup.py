"""The warm-up (edgeseg.runtime.warmup): before the first series of a bundle on a PC, the shipped MRI is segmented
as NIfTI and as DICOM so that the planner predicts the first real series from this PC's measured rates; on a PC that
has run the bundle, as NIfTI alone, so that a new process's one-off costs are not its first series'."""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from edgeseg.demo import demo_bundle_path
from edgeseg.errors import BundleError
from edgeseg.runtime import warmup
from edgeseg.runtime.options import OutputOptions, SegmentOptions
from edgeseg.runtime.plan import LatencyTable, bundle_identity
from edgeseg.runtime.read import SeriesGeometry
from edgeseg.runtime.segmenter import Segmenter

pytest.importorskip("openvino")


def _segmenter(tmp_path: Path, budget: float | None = 1e6) -> Segmenter:
    options = SegmentOptions(time_budget_s=budget, cache_dir=tmp_path / "cache",
                             outputs=OutputOptions(preview=False))
    return Segmenter(demo_bundle_path(), options, latency_path=tmp_path / "latency.json")


def test_warm_up_measures_both_kinds_once_and_leaves_nothing(tmp_path: Path) -> None:
    segmenter = _segmenter(tmp_path)
    assert segmenter.planner is not None and not segmenter.planner.has_runs()
    geometry = SeriesGeometry((320, 260, 72), (1.19, 1.19, 1.5))
    before = segmenter.plan(geometry, instances=72)
    assert before is not None and "stages" not in before.details  # the guesses: the overhead model

    runs = segmenter.warm_up(tmp_path / "state")

    # the prime first (the process's cold run, not learnt from), then the two measured series
    assert [(r.kind, r.shape, r.recorded) for r in runs] == [
        ("nifti", (117, 91, 20), False), ("nifti", (117, 91, 20), True), ("dicom", (117, 91, 20), True)]
    assert _kept_runs(tmp_path) == {"read:mvoxel": 1, "read:instance+mvoxel": 1}
    assert all(r.seconds > 0 and r.timings["infer"] > 0 for r in runs)
    assert list((tmp_path / "state").iterdir()) == []  # inputs and results removed
    assert segmenter.planner.has_runs()
    rates = LatencyTable(tmp_path / "latency.json").stage_rates(bundle_identity(segmenter.bundle), "CPU", None)
    # each kind's reading and writing measured (the demo bundle's own spacing: no resampling)
    for key in ("read:mvoxel", "read:instance+mvoxel", "write:mvoxel", "write:dicom_instance+mvoxel",
                "preprocess:grid_mvoxel", "resample:grid_mvoxel", "infer:tile_s"):
        assert key in rates, key
    after = segmenter.plan(geometry, instances=72)
    assert after is not None and set(after.details["stages"]) >= {"read", "infer", "resample", "write"}
    assert segmenter.warm_up(tmp_path / "state") == []  # once per process and planner
    assert len(segmenter.warm_up(tmp_path / "state", force=True)) == 3


def test_a_pc_with_runs_primes_the_process_with_the_nifti_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A restarted watcher (a new segmenter over a latency table that has this PC's runs): one series, the shipped
    NIfTI (no DICOM copy made), not recorded (the cold run would pull the rates), nothing left; once per process."""
    assert len(_segmenter(tmp_path).warm_up(tmp_path / "state")) == 3
    recorded = _kept_runs(tmp_path)
    assert recorded == {"read:mvoxel": 1, "read:instance+mvoxel": 1}

    def no_copy(*args: object, **kwargs: object) -> None:
        raise AssertionError("the prime wrote a DICOM copy")

    monkeypatch.setattr("edgeseg.demo.dicom_series.write_dicom_series", no_copy)
    restarted = _segmenter(tmp_path)
    assert restarted.planner is not None and restarted.planner.has_runs()
    with caplog.at_level(logging.INFO, logger=warmup.__name__):
        runs = restarted.warm_up(tmp_path / "state")

    assert [(r.kind, r.shape, r.recorded) for r in runs] == [("nifti", (117, 91, 20), False)]
    assert runs[0].timings["infer"] > 0
    assert any("priming this process" in r.getMessage() for r in caplog.records)
    assert not any("measuring this PC" in r.getMessage() or r.levelno >= logging.WARNING for r in caplog.records)
    assert list((tmp_path / "state").iterdir()) == []
    assert _kept_runs(tmp_path) == recorded  # not recorded
    assert restarted.warm_up(tmp_path / "state") == []  # once per process and planner


def test_no_prime_where_it_would_cost_more_than_it_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A bundle whose prime the planner predicts above PRIME_MAX_S (a TotalSegmentator-sized one: ~16 s for a few
    tenths of a second saved) is not primed: a fresh PC measures with the two series alone, a restarted watcher
    does nothing."""
    monkeypatch.setattr(warmup, "PRIME_MAX_S", 0.0)
    runs = _segmenter(tmp_path).warm_up(tmp_path / "state")
    assert [(r.kind, r.recorded) for r in runs] == [("nifti", True), ("dicom", True)]
    restarted = _segmenter(tmp_path)
    calls: list[object] = []
    monkeypatch.setattr(restarted, "_segment", lambda *a, **k: calls.append(a))
    with caplog.at_level(logging.INFO, logger=warmup.__name__):
        assert restarted.warm_up(tmp_path / "state") == []
    assert calls == []
    assert any("not priming this process" in r.getMessage() for r in caplog.records)
    assert list((tmp_path / "state").iterdir()) == []


def test_a_failed_prime_is_a_warning_that_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    assert len(_segmenter(tmp_path).warm_up(tmp_path / "state")) == 3
    restarted = _segmenter(tmp_path)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp")

    monkeypatch.setattr(restarted, "_segment", broken)
    with caplog.at_level(logging.WARNING, logger=warmup.__name__):
        assert restarted.warm_up(tmp_path / "state") == []
    [failure] = [r for r in caplog.records if "warm-up failed" in r.getMessage()]
    assert "not primed" in failure.getMessage() and "guesses" not in failure.getMessage()
    assert list((tmp_path / "state").iterdir()) == []


def _kept_runs(tmp_path: Path) -> dict[str, int]:
    """The latency table's kept runs of reading, per kind (NIfTI: read:mvoxel, DICOM: read:instance+mvoxel)."""
    data = json.loads((tmp_path / "latency.json").read_text())
    [entry] = data["overheads"].values()
    return {k: len(v) for k, v in entry["stage_samples"].items() if k.startswith("read:")}


def test_warm_up_without_a_planner_does_nothing(tmp_path: Path) -> None:
    segmenter = _segmenter(tmp_path, budget=None)
    assert segmenter.planner is None
    assert segmenter.warm_up(tmp_path / "state") == []
    assert not (tmp_path / "state").exists() and not (tmp_path / "latency.json").exists()


def test_a_stop_request_ends_the_warm_up(tmp_path: Path) -> None:
    """A stop request set while the first warm-up series runs ends it at the segmenter's next checkpoint: nothing
    raised, nothing recorded, nothing left."""
    segmenter = _segmenter(tmp_path)
    stop = threading.Event()
    original = segmenter._segment

    def stopped_during(*args: object, **kwargs: object) -> object:
        stop.set()  # as a SIGTERM would, while the series runs
        return original(*args, **kwargs)  # type: ignore[arg-type]

    segmenter._segment = stopped_during  # type: ignore[method-assign]
    assert segmenter.warm_up(tmp_path / "state", cancel=stop) == []
    assert list((tmp_path / "state").iterdir()) == []
    assert segmenter.planner is not None and not segmenter.planner.has_runs()


def test_workers_warm_up_once_and_stale_folders_go(tmp_path: Path) -> None:
    """Two watcher workers asking at once: one warms up, the other waits and finds it done. A warm-up folder a
    killed process left behind is removed."""
    stale = tmp_path / "state" / ".edgeseg-warm-up-killed"
    (stale / "inputs").mkdir(parents=True)
    (stale / "inputs" / "warm-up.nii.gz").write_bytes(b"left by kill -9")
    segmenter = _segmenter(tmp_path)
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(len(segmenter.warm_up(tmp_path / "state"))))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(got) == [0, 3]
    assert list((tmp_path / "state").iterdir()) == []


def test_a_failed_warm_up_is_a_warning_and_nothing_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    def missing() -> Path:
        raise BundleError("The demo MRI is missing from this installation (x); reinstall edgeseg.")

    monkeypatch.setattr("edgeseg.demo.demo_mri_path", missing)
    segmenter = _segmenter(tmp_path)
    with caplog.at_level(logging.WARNING, logger=warmup.__name__):
        assert segmenter.warm_up(tmp_path / "state") == []
    assert any("warm-up failed" in r.getMessage() and "demo MRI is missing" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert list((tmp_path / "state").iterdir()) == []


def test_an_unexpected_error_in_the_warm_up_is_a_warning_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Whatever fails inside the warm-up (here the pipeline itself), the watcher's worker goes on to its series."""
    segmenter = _segmenter(tmp_path)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp")

    monkeypatch.setattr(segmenter, "_segment", broken)
    with caplog.at_level(logging.WARNING, logger=warmup.__name__):
        assert segmenter.warm_up(tmp_path / "state") == []
        assert segmenter.warm_up(tmp_path / "state") == []  # tried once: not again by the next worker
    failures = [r for r in caplog.records if "warm-up failed" in r.getMessage()]
    assert len(failures) == 1 and "(RuntimeError)" in failures[0].getMessage()
    assert list((tmp_path / "state").iterdir()) == []


def test_a_warm_up_that_cannot_make_its_folder_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "state").write_text("a file where the state folder should be")
    segmenter = _segmenter(tmp_path)
    with caplog.at_level(logging.WARNING, logger=warmup.__name__):
        assert segmenter.warm_up(tmp_path / "state") == []
    assert any("warm-up failed" in r.getMessage() for r in caplog.records)
