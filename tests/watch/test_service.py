"""The watcher end to end in-process, with the fake segmenter: real files, real observer, real threads."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from edgeseg.errors import ConfigError
from watch_helpers import (
    QUIET, CountingSegmenter, copy_slowly, error_files, results, tree, wait_for, write_non_image, write_series,
)

from edgeseg.errors import InferenceError, OutputError, kind_of, remedy_for
from edgeseg.runtime.read import fingerprint, stamp_files
from edgeseg.runtime.watch.scheduler import Scheduler
from edgeseg.runtime.watch.service import Watcher
from edgeseg.runtime.watch.store import COMPLETE, DONE, FAILED, JobStore


def manifest(result: Path) -> dict:
    return json.loads((result / "manifest.json").read_text())


def assert_result_matches_inputs(result: Path, n_files: int) -> None:
    m = manifest(result)
    assert len(m["inputs"]) == n_files
    folder = result.parent
    stamps = stamp_files(folder, [folder / rel for rel, _, _ in m["inputs"]])
    assert fingerprint(stamps) == m["input_fingerprint"]


def test_series_copied_slice_by_slice_gives_exactly_one_result(start_watcher, segmenter, roots, tmp_path) -> None:
    w = start_watcher()
    files = write_series(tmp_path / "src", 8)
    copy_slowly(files, roots / "exam1", delay_s=QUIET / 8)
    assert wait_for(lambda: len(results(roots)) == 1)
    assert w.wait_idle(10)
    time.sleep(2 * QUIET)  # nothing more happens: our own output is not taken as input
    assert sum(segmenter.calls.values()) == 1
    (result,) = results(roots)
    assert result.parent == roots / "exam1"
    assert_result_matches_inputs(result, 8)
    row = w.store.get(next(iter(segmenter.calls)))
    assert row.state == DONE and row.output_path == str(result) and row.attempts == 1
    assert error_files(roots) == [] and w.alive()


def test_interleaved_series_and_a_nifti_each_once(start_watcher, segmenter, roots, tmp_path, real_mri) -> None:
    w = start_watcher()
    a = write_series(tmp_path / "a", 5, description="t1", seed=1)
    b = write_series(tmp_path / "b", 6, description="t2", seed=2)
    interleaved = [f for pair in zip(a, b) for f in pair] + b[5:]
    copy_slowly(interleaved, roots / "exam", delay_s=0.03)
    shutil.copyfile(real_mri, roots / "case.nii.gz")
    assert wait_for(lambda: len(results(roots)) == 3)
    assert w.wait_idle(10)
    assert sorted(segmenter.calls.values()) == [1, 1, 1]
    by_count = sorted(results(roots), key=lambda r: len(manifest(r)["inputs"]))
    assert [len(manifest(r)["inputs"]) for r in by_count] == [1, 5, 6]
    assert by_count[0] == roots / "case.edgeseg"


def test_late_instance_reopens_and_replaces_the_result(start_watcher, segmenter, roots, tmp_path) -> None:
    w = start_watcher()
    files = write_series(tmp_path / "src", 6)
    copy_slowly(files[:5], roots / "exam", delay_s=0.02)
    # the headers announce 6 images: after 3 quiet periods without the 6th the series runs anyway
    assert wait_for(lambda: len(results(roots)) == 1, timeout=15)
    assert len(manifest(results(roots)[0])["inputs"]) == 5
    copy_slowly(files[5:], roots / "exam")
    assert wait_for(lambda: len(manifest(results(roots)[0])["inputs"]) == 6, timeout=15)
    assert w.wait_idle(10)
    assert list(segmenter.calls.values()) == [2]
    assert len(results(roots)) == 1 and not list(roots.rglob(".*edgeseg*"))
    assert_result_matches_inputs(results(roots)[0], 6)


def test_restart_does_not_repeat_done_series_but_redoes_a_deleted_output(make_config, roots, tmp_path) -> None:
    write_series(roots / "exam", 3)
    first = CountingSegmenter()
    w = Watcher(make_config(), first, settle_s=0.1)
    w.start()
    assert wait_for(lambda: len(results(roots)) == 1) and w.wait_idle(10)
    assert w.stop()
    second = CountingSegmenter()
    w = Watcher(make_config(), second, settle_s=0.1)
    w.start()
    assert w.wait_idle(10)
    assert sum(second.calls.values()) == 0  # done, same input: skipped
    assert w.stop()
    shutil.rmtree(results(roots)[0])
    third = CountingSegmenter()
    w = Watcher(make_config(), third, settle_s=0.1)
    w.start()
    assert wait_for(lambda: len(results(roots)) == 1) and w.wait_idle(10)
    assert sum(third.calls.values()) == 1
    assert w.stop()


@pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length")  # the 300-char description
def test_bad_inputs_get_error_files_and_nothing_escapes_the_series_folder(start_watcher, segmenter, roots,
                                                                         tmp_path) -> None:
    good = write_series(tmp_path / "good", 4)
    # one folder per case, prepared outside and moved in together
    staging = tmp_path / "staging"
    cases = {
        "zero_byte": lambda d: (d / "IM0001").write_bytes(b""),
        "non_dicom": lambda d: (d / "photo.jpg").write_bytes(os.urandom(2000)),
        "truncated_header": lambda d: (d / "IM0001").write_bytes(good[0].read_bytes()[:300]),
        "truncated_pixels": lambda d: [shutil.copyfile(f, d / f.name) for f in good[1:]] and
        (d / good[0].name).write_bytes(good[0].read_bytes()[:-200]),
        "non_image": lambda d: write_non_image(d / "sr.dcm"),
        "missing_slice": lambda d: write_series(d, 6, skip=(2,)),
        "evil_name": lambda d: write_series(d, 3, description="../../../escape/..\\x/../" + "a" * 300),
        "mixed": lambda d: [shutil.copyfile(f, d / f.name) for f in good] and (d / "junk.bin").write_bytes(b"x" * 99),
    }
    for name, make in cases.items():
        (staging / name).mkdir(parents=True)
        make(staging / name)
    outside_before = tree(tmp_path.parent) - {p for p in tree(tmp_path.parent) if p.startswith(tmp_path.name + "/")}
    w = start_watcher()
    for name in cases:
        os.rename(staging / name, roots / name)  # a whole folder appears at once (one event)
    expected_errors = {"zero_byte", "non_dicom", "truncated_header", "truncated_pixels", "non_image", "missing_slice"}
    assert wait_for(lambda: {e.parent.name for e in error_files(roots)} >= expected_errors, timeout=20), \
        {e.parent.name for e in error_files(roots)}
    assert wait_for(lambda: len(results(roots)) == 2, timeout=20)
    assert w.wait_idle(10)
    assert w.alive()
    assert {r.parent.name for r in results(roots)} == {"evil_name", "mixed"}
    for err in error_files(roots):
        data = json.loads(err.read_text())
        assert data["error"] and data["what_to_do"], err
    # every new path lies inside one of the case folders (or the watcher's own state and log folders)
    for rel in tree(roots):
        assert "/" in rel or rel in cases, f"written outside a series folder: {rel}"
    assert not any(p.startswith(("escape", "x")) for p in tree(roots))
    outside_after = tree(tmp_path.parent) - {p for p in tree(tmp_path.parent) if p.startswith(tmp_path.name + "/")}
    assert outside_after == outside_before
    assert {p.name for p in tmp_path.iterdir()} == {"incoming", "staging", "good", "bundle", "state", "logs"}
    assert list((tmp_path / "staging").iterdir()) == []
    evil = results(roots / "evil_name")[0]
    assert ".." not in evil.name and "/" not in evil.name
    rows = {Path(r.folder).name: r for r in w.store.rows()}
    assert rows["missing_slice"].state == FAILED and rows["zero_byte"].state == FAILED
    # invalid input is not retried in a loop: the same files would fail the same way
    assert segmenter.calls[rows["missing_slice"].key] == 1 and segmenter.calls[rows["truncated_pixels"].key] == 1


def test_poison_series_is_given_up_after_max_attempts(start_watcher, segmenter, make_config, roots) -> None:
    segmenter.fail["/poison::"] = RuntimeError("boom")
    w = start_watcher(max_attempts=3)
    write_series(roots / "poison", 3)
    write_series(roots / "fine", 3, seed=5)
    assert wait_for(lambda: sum(v for k, v in segmenter.calls.items() if "/poison::" in k) == 3, timeout=20)
    assert w.wait_idle(15)
    time.sleep(4 * QUIET)
    assert sorted(segmenter.calls.values()) == [1, 3]
    (err,) = error_files(roots)
    data = json.loads(err.read_text())
    assert "boom" in data["error"] and "given up" in data["what_to_do"]
    row = next(r for r in w.store.rows() if "/poison::" in r.key)
    assert row.state == FAILED and row.attempts == 3 and row.error_kind == "internal"
    assert w.alive() and len(results(roots)) == 1
    w.stop()
    again = CountingSegmenter()
    w2 = Watcher(make_config(max_attempts=3), again, settle_s=0.1)
    w2.start()
    try:
        assert w2.wait_idle(10)
        assert sum(again.calls.values()) == 0  # not retried on restart either
    finally:
        w2.stop()


def test_edgeseg_errors_are_recorded_with_their_kind(start_watcher, segmenter, roots) -> None:
    segmenter.fail["/gpu::"] = InferenceError("GPU plugin crashed")
    w = start_watcher(max_attempts=1)
    write_series(roots / "gpu", 3)
    assert wait_for(lambda: len(error_files(roots)) == 1)
    assert w.wait_idle(10)
    data = json.loads(error_files(roots)[0].read_text())
    assert data["kind"] == "inference" and "device: CPU" in data["what_to_do"]


@pytest.mark.parametrize("kind", ["config", "bundle"])
def test_a_device_or_precision_that_cannot_run_is_given_up_at_once(start_watcher, segmenter, roots, kind) -> None:
    """A device this PC does not have (or edgeseg does not run on) or a precision the bundle lacks fails every
    attempt the same way: no retries, the error file says why."""
    from edgeseg.errors import BundleError, ConfigError

    err = {"config": ConfigError("Device GPU is not on this PC (OpenVINO sees: CPU)."),
           "bundle": BundleError("Bundle b has no int8 model for part 'a' (it has fp32).")}[kind]
    segmenter.fail["/exam::"] = err
    w = start_watcher(max_attempts=3)
    write_series(roots / "exam", 3)
    assert wait_for(lambda: len(error_files(roots)) == 1)
    assert w.wait_idle(10)
    time.sleep(4 * QUIET)
    assert sum(segmenter.calls.values()) == 1
    (row,) = w.store.rows()
    assert row.state == FAILED and row.attempts == 3 and row.error_kind == kind
    assert "Not retried" in json.loads(error_files(roots)[0].read_text())["what_to_do"]


def test_error_file_says_what_the_error_class_says_to_do(start_watcher, segmenter, roots) -> None:
    failures = {"full": OutputError("disk full"), "bug": RuntimeError("boom")}
    for name, err in failures.items():
        segmenter.fail[f"/{name}::"] = err
    w = start_watcher(max_attempts=1)
    for name in failures:
        write_series(roots / name, 3)
    assert wait_for(lambda: len(error_files(roots)) == 2)
    assert w.wait_idle(10)
    for path in error_files(roots):
        err = failures[path.parent.name]
        data = json.loads(path.read_text())
        remedy = remedy_for(err, device=w.config.device, folder=path.parent, log_file=w.config.log_file)
        assert data["kind"] == kind_of(err) and data["what_to_do"].startswith(remedy + " ")
    assert str(roots / "full") in json.loads(error_files(roots / "full")[0].read_text())["what_to_do"]


def test_success_after_failure_clears_the_error_file(start_watcher, segmenter, roots, tmp_path) -> None:
    w = start_watcher(max_attempts=1)
    files = write_series(tmp_path / "src", 5, names="ordered")
    copy_slowly(files[:2] + files[3:], roots / "exam", delay_s=0)  # slice 3 of 5 is missing
    assert wait_for(lambda: len(error_files(roots)) == 1, timeout=15)
    assert "not evenly spaced" in json.loads(error_files(roots)[0].read_text())["error"]
    copy_slowly(files[2:3], roots / "exam")  # it arrives late: the series re-opens and now succeeds
    assert wait_for(lambda: len(results(roots)) == 1, timeout=15)
    assert w.wait_idle(10)
    assert error_files(roots) == []
    assert results(roots)[0].name[: -len(".edgeseg")] == w.store.rows()[0].name


def test_polling_observer(start_watcher, segmenter, roots, tmp_path) -> None:
    w = start_watcher(observer="polling", polling_interval_s=0.2)
    copy_slowly(write_series(tmp_path / "src", 4), roots / "share" / "exam", delay_s=0.02)
    assert wait_for(lambda: len(results(roots)) == 1, timeout=15)
    assert w.wait_idle(10)
    assert sum(segmenter.calls.values()) == 1


def test_once_processes_what_is_there_and_returns(make_config, roots, real_mri) -> None:
    write_series(roots / "exam", 3)
    shutil.copyfile(real_mri, roots / "case.nii.gz")
    (roots / "bad").mkdir()
    (roots / "bad" / "x.dcm").write_bytes(b"")
    seg = CountingSegmenter()
    before = set(threading.enumerate())
    t0 = time.monotonic()
    code = Watcher(make_config(), seg, once=True, settle_s=0.1).run()
    assert time.monotonic() - t0 < 15
    assert code == 1  # one input failed
    assert len(results(roots)) == 2 and len(error_files(roots)) == 1
    assert wait_for(lambda: set(threading.enumerate()) <= before, timeout=5)


def test_stop_cancels_a_long_running_series_which_runs_again_next_time(make_config, roots) -> None:
    slow = CountingSegmenter(delay_s=30)
    write_series(roots / "exam", 3)
    cfg = make_config(stop_grace_s=0.3)
    w = Watcher(cfg, slow, settle_s=0.1)
    w.start()
    assert wait_for(lambda: sum(slow.calls.values()) == 1)
    time.sleep(0.2)
    t0 = time.monotonic()
    assert w.stop() is True  # cancelled at its next progress report, not abandoned
    assert time.monotonic() - t0 < 5
    with JobStore(cfg.store_path) as store:
        (row,) = store.rows()
        assert row.state == COMPLETE and row.attempts == 0
    assert results(roots) == [] and not list(roots.rglob(".*edgeseg*"))
    w = Watcher(cfg, CountingSegmenter(), settle_s=0.1)
    w.start()
    assert wait_for(lambda: len(results(roots)) == 1) and w.wait_idle(10)
    assert w.stop()


def test_start_stop_leaves_no_threads(make_config, roots) -> None:
    before = set(threading.enumerate())
    for _ in range(3):
        w = Watcher(make_config(), CountingSegmenter(), settle_s=0.1)
        w.start()
        assert w.alive()
        assert w.stop()
    assert wait_for(lambda: set(threading.enumerate()) <= before, timeout=5), \
        [t.name for t in set(threading.enumerate()) - before]


def test_a_root_holding_the_state_folder_is_refused(make_config, roots) -> None:
    """Issue 19: a root that holds the watcher's own state folder (one of the state folder's parents) is refused at
    start with its key path, not watched."""
    with pytest.raises(ConfigError, match=r"roots\[0\].*holds the watcher's own state folder"):
        make_config(state_dir=str(roots / "state"), log_dir=str(roots / "logs"))


def test_real_segmenter_is_resolved_at_start(make_config) -> None:
    from edgeseg.errors import BundleError

    w = Watcher(make_config())  # no segmenter injected: the real one needs a real bundle (this one is empty)
    with pytest.raises(BundleError):
        w.start()
    assert not w.alive()


def test_a_series_that_keeps_killing_the_watcher_is_given_up_at_start(make_config, roots) -> None:
    cfg = make_config(max_attempts=2)
    write_series(roots / "exam", 3)
    seg = CountingSegmenter()
    w = Watcher(cfg, seg, settle_s=0.1)
    w.start()
    assert wait_for(lambda: len(results(roots)) == 1) and w.wait_idle(10)
    assert w.stop()
    shutil.rmtree(results(roots)[0])
    with JobStore(cfg.store_path) as store:  # as if the process died twice while segmenting it
        (row,) = store.rows()
        store.mark_running(row.key)
    with JobStore(cfg.store_path) as store:
        store.reconcile(cfg.max_attempts)
        store.mark_running(row.key)
    seg2 = CountingSegmenter()
    w = Watcher(cfg, seg2, settle_s=0.1)
    w.start()
    try:
        assert w.wait_idle(10)
        assert sum(seg2.calls.values()) == 0
        (err,) = error_files(roots)
        assert "stopped 2 times" in json.loads(err.read_text())["error"]
        assert w.store.get(row.key).state == FAILED
    finally:
        assert w.stop()


def test_a_crashed_loop_makes_run_return_1(make_config, roots, monkeypatch) -> None:
    w = Watcher(make_config(), CountingSegmenter(), settle_s=0.1)

    def broken_loop(self: Scheduler) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(Scheduler, "loop", broken_loop)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the traceback is logged already
    assert w.run() == 1
