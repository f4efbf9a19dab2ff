"""The warm-up (edgeseg.runtime.warmup): before the first series of a bundle on a PC, the shipped MRI is segmented
as NIfTI and as DICOM so that the planner predicts the first real series from this PC's measured rates; before
that, where it is cheap, once as NIfTI, not recorded (the prime), so that a new process's one-off costs are not its
first series' (alone on a PC that has run the bundle)."""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from edgeseg.demo import demo_bundle_path, demo_mri_path
from edgeseg.errors import BundleError
from edgeseg.runtime import warmup
from edgeseg.runtime.options import OutputOptions, SegmentOptions
from edgeseg.runtime.plan import DEFAULT_COMPILE_S, LatencyTable, bundle_identity
from edgeseg.runtime.read import SeriesGeometry, read_series
from edgeseg.runtime.segmenter import Segmenter

pytest.importorskip("openvino")


@pytest.fixture(autouse=True)
def _always_prime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The prime runs in these tests whatever this machine's speed (the demo bundle's is predicted ~0.5 s; a loaded
    CI machine must not turn a test of the prime into one of its absence); the tests of its absence set it."""
    monkeypatch.setattr(warmup, "PRIME_MAX_S", float("inf"))


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
    monkeypatch.setattr(restarted, "_segment", _broken_pipeline)
    with caplog.at_level(logging.WARNING, logger=warmup.__name__):
        assert restarted.warm_up(tmp_path / "state") == []
    [failure] = [r for r in caplog.records if "warm-up failed" in r.getMessage()]
    assert "not primed" in failure.getMessage() and "guesses" not in failure.getMessage()
    assert list((tmp_path / "state").iterdir()) == []


def _stop_during(segmenter: Segmenter, stop: threading.Event, nth: int) -> list[int]:
    """Make ``segmenter`` set ``stop`` while its ``nth`` series runs (as a SIGTERM would); returns its calls."""
    original = segmenter._segment
    calls: list[int] = []

    def stopped_during(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == nth:
            stop.set()
        return original(*args, **kwargs)  # type: ignore[arg-type]

    segmenter._segment = stopped_during  # type: ignore[method-assign]
    return calls


def _broken_pipeline(*args: object, **kwargs: object) -> None:
    raise RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp")


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


@pytest.mark.parametrize("during", [1, 2])
def test_a_stop_request_ends_the_warm_up(tmp_path: Path, during: int) -> None:
    """A stop request set while a warm-up series runs (the prime, or the first recorded series) ends it at the
    segmenter's next checkpoint: nothing raised, nothing recorded, nothing left."""
    segmenter = _segmenter(tmp_path)
    stop = threading.Event()
    calls = _stop_during(segmenter, stop, during)
    runs = segmenter.warm_up(tmp_path / "state", cancel=stop)
    assert [r.recorded for r in runs] == [False] * (during - 1)  # the prime, where it ended before the stop
    assert len(calls) == during
    assert list((tmp_path / "state").iterdir()) == []
    assert segmenter.planner is not None and not segmenter.planner.has_runs()


def test_an_interrupted_warm_up_is_primed_and_measured_at_the_next_start(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm-up stopped after the tile latencies were saved leaves a table with latencies and no runs; the next
    process has compiled nothing, and the prime's cost leaves compiling out (the planner's overhead model counts
    DEFAULT_COMPILE_S, 2.5 s, a part for it: the demo prime would have cost more than PRIME_MAX_S); it is primed,
    then measured."""
    stop = threading.Event()
    first = _segmenter(tmp_path)
    _stop_during(first, stop, 1)
    assert first.warm_up(tmp_path / "state", cancel=stop) == []
    assert first.planner is not None and not first.planner.has_runs()
    restarted = _segmenter(tmp_path)
    assert restarted.planner is not None
    plan = restarted.planner.plan(SeriesGeometry.from_volume(read_series(demo_mri_path())), float("inf"))
    assert plan.predicted_s is not None and "stages" not in plan.details  # the overhead model: no runs yet
    assert plan.details["uncompiled_parts"] >= 1 and plan.details.get("measuring_s", 0.0) == 0.0
    assert plan.details["compile_s"] == pytest.approx(DEFAULT_COMPILE_S * plan.details["uncompiled_parts"])
    assert warmup._prime_cost(restarted.planner) == pytest.approx(plan.predicted_s - plan.details["compile_s"])
    runs = restarted.warm_up(tmp_path / "state")
    assert [(r.kind, r.recorded) for r in runs] == [("nifti", False), ("nifti", True), ("dicom", True)]


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
    monkeypatch.setattr(segmenter, "_segment", _broken_pipeline)
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
