"""Issue 9 (hardening), the state folder: one watcher per state folder (finding 4), a state folder deleted while
running, a damaged or empty job store (finding 9), and the labels and wording of error files (low)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from helpers import fake_watcher
from watch_helpers import CountingSegmenter, error_files, results, wait_for, write_series

from edgeseg.cli import main
from edgeseg.errors import StateStoreError, WatcherRunningError
from edgeseg.runtime.watch.config import load_config
from edgeseg.runtime.watch.service import Watcher
from edgeseg.runtime.watch.store import FAILED, JobStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_file(tmp_path: Path, roots: Path) -> Path:
    (tmp_path / "bundle").mkdir(exist_ok=True)
    path = tmp_path / "watch_config.yaml"
    path.write_text(f"roots: [{roots}]\nbundle: bundle\nquiet_period_s: 0.3\nstate_dir: state\nlog_dir: logs\n"
                    "time_budget_s: null\nstop_grace_s: 2\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ finding 4: the lock


def test_finding4_second_watcher_on_one_state_folder_fails_at_start_and_the_first_carries_on(
        make_config, roots) -> None:
    cfg = make_config()
    first_seg, second_seg = CountingSegmenter(), CountingSegmenter()
    first = Watcher(cfg, first_seg, settle_s=0.1)
    first.start()
    try:
        second = Watcher(make_config(), second_seg, settle_s=0.1)
        with pytest.raises(WatcherRunningError) as info:
            second.start()
        message = str(info.value)
        assert f"Another watcher (pid {os.getpid()}) uses this state folder {cfg.state_dir}" in message
        assert info.value.exit_code == WatcherRunningError.exit_code not in (0, 1, 2)
        assert not second.alive() and second.store is None  # refused before the store was opened or reconciled
        write_series(roots / "exam", 3)
        assert wait_for(lambda: len(results(roots)) == 1) and first.wait_idle(10)
        assert sum(first_seg.calls.values()) == 1 and sum(second_seg.calls.values()) == 0
    finally:
        assert first.stop()
    again = Watcher(make_config(), CountingSegmenter(), settle_s=0.1)  # the lock went with the first watcher
    again.start()
    assert again.stop()


def test_finding4_second_watcher_from_the_command_line_exits_with_its_own_code(
        config_file, tmp_path, capsys) -> None:
    first = Watcher(load_config(config_file), CountingSegmenter(), settle_s=0.1)
    first.start()
    try:
        code = main(["watch", "--config", str(config_file), "--once"])
    finally:
        assert first.stop()
    assert code == WatcherRunningError.exit_code == 11
    err = capsys.readouterr().err
    assert f"Another watcher (pid {os.getpid()}) uses this state folder {tmp_path / 'state'}" in err


def test_finding4_status_reads_the_lock_not_only_the_heartbeat_age(config_file, tmp_path, roots, capsys) -> None:
    """A watcher killed with kill -9 left a fresh heartbeat saying it runs; status must say it is not running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESEG_")}
    proc = subprocess.Popen(fake_watcher.command("-q", "watch", "--config", str(config_file)),
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    beat = tmp_path / "state" / "watcher.json"
    try:
        assert wait_for(lambda: beat.is_file() and json.loads(beat.read_text()).get("pid") == proc.pid, timeout=60)
        assert main(["status", "--config", str(config_file)]) == 0
        assert f"watcher: running (pid {proc.pid}" in capsys.readouterr().out
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not json.loads(beat.read_text())["stopped"]  # the heartbeat still says "running", seconds old
    assert main(["status", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "watcher: NOT RUNNING" in out and f"pid {proc.pid} ended without stopping cleanly" in out
    assert "watcher: running" not in out


# ------------------------------------------------------------------------- finding 9: the state folder and store


def test_finding9_state_folder_deleted_while_running_stops_the_watcher_with_the_fix(make_config, roots) -> None:
    cfg = make_config()
    seg = CountingSegmenter()
    w = Watcher(cfg, seg, settle_s=0.1)
    deleter = threading.Timer(1.0, shutil.rmtree, args=(cfg.state_dir,))
    safety = threading.Timer(30.0, w.request_stop)  # old code: run() would never return by itself
    deleter.start()
    safety.start()
    try:
        with pytest.raises(StateStoreError) as info:
            w.run()
    finally:
        deleter.cancel()
        safety.cancel()
    message = str(info.value)
    assert f"The state folder {cfg.state_dir}" in message and "deleted or replaced" in message
    assert "Fix: restore the state folder" in message
    assert w.fatal is info.value and not w.alive()
    assert not cfg.store_path.exists()  # stopped: no store was recreated there


def _damage(store_path: Path) -> None:
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store_path.write_bytes(b"this is not a database, it was overwritten by a copy tool\n" * 200)


def test_finding9_damaged_store_stops_the_watcher_with_the_exact_command(make_config, roots) -> None:
    cfg = make_config()
    _damage(cfg.store_path)
    w = Watcher(cfg, CountingSegmenter(), settle_s=0.1)
    with pytest.raises(StateStoreError) as info:
        w.start()
    message = str(info.value)
    assert f"Job store {cfg.store_path} is damaged" in message
    assert f'mv "{cfg.store_path}" "{cfg.store_path}.damaged-' in message
    assert "network share" not in message
    assert not w.alive()
    cfg.store_path.unlink()  # the fix; and the refusal released the lock: a watcher starts now
    w = Watcher(make_config(), CountingSegmenter(), settle_s=0.1)
    w.start()
    assert w.stop()


@pytest.mark.parametrize("damage", ["garbage", "malformed"])
def test_finding9_status_on_a_damaged_store_prints_the_fix_not_a_traceback(
        damage, config_file, tmp_path, capsys) -> None:
    store_path = tmp_path / "state" / "jobs.sqlite3"
    if damage == "garbage":
        _damage(store_path)
    else:  # a real store whose table pages were overwritten: the header is fine, the queries fail
        with JobStore(store_path) as store:
            for i in range(400):
                store.discover(f"k{i}", "nifti", tmp_path, f"name{i}" * 20)
        data = bytearray(store_path.read_bytes())
        data[4096:] = b"\xa5" * (len(data) - 4096)
        store_path.write_bytes(bytes(data))
        for extra in ("-wal", "-shm"):
            Path(f"{store_path}{extra}").unlink(missing_ok=True)
    code = main(["status", "--config", str(config_file)])
    captured = capsys.readouterr()
    assert code == StateStoreError.exit_code
    assert "Traceback" not in captured.out + captured.err
    assert f"Job store {store_path} is damaged" in captured.out and f'mv "{store_path}"' in captured.out


def test_finding9_empty_store_file_is_refused_not_taken_for_a_new_store(make_config, roots) -> None:
    cfg = make_config()
    write_series(roots / "exam", 3)
    w = Watcher(cfg, CountingSegmenter(), settle_s=0.1)
    w.start()
    assert wait_for(lambda: len(results(roots)) == 1) and w.wait_idle(10)
    assert w.stop()
    cfg.store_path.write_bytes(b"")  # e.g. a crash of the file system, or a botched copy of the state folder
    for extra in ("-wal", "-shm"):
        Path(f"{cfg.store_path}{extra}").unlink(missing_ok=True)
    seg = CountingSegmenter()
    w = Watcher(cfg, seg, settle_s=0.1)
    with pytest.raises(StateStoreError) as info:
        w.start()
    assert "is empty (0 bytes)" in str(info.value) and f'mv "{cfg.store_path}"' in str(info.value)
    assert sum(seg.calls.values()) == 0 and not w.alive()


# ----------------------------------------------------------------------------------------------- low: labels


def test_low_series_given_up_after_repeated_kills_has_its_own_label(make_config, roots) -> None:
    cfg = make_config(max_attempts=2)
    write_series(roots / "exam", 3)
    with JobStore(cfg.store_path) as store:  # as if the process died twice while segmenting it (OOM kill)
        store.mark_complete("k", "dicom", roots / "exam", "exam_series", "fp", 3)
        store.mark_running("k")
        store.reconcile(cfg.max_attempts)
        store.mark_running("k")
    w = Watcher(cfg, CountingSegmenter(), settle_s=0.1)
    w.start()
    try:
        (err,) = [e for e in error_files(roots) if e.name.startswith("exam_series")]
        data = json.loads(err.read_text())
        assert data["kind"] == "interrupted" and "stopped 2 times" in data["error"]
        assert w.store.get("k").state == FAILED
    finally:
        assert w.stop()


def test_low_out_of_memory_inside_a_series_is_labelled_out_of_memory(start_watcher, segmenter, roots) -> None:
    segmenter.fail["/big::"] = MemoryError()
    w = start_watcher(max_attempts=1)
    write_series(roots / "big", 3)
    assert wait_for(lambda: len(error_files(roots)) == 1) and w.wait_idle(10)
    data = json.loads(error_files(roots)[0].read_text())
    assert data["kind"] == "out_of_memory" and "bug in edgeseg" not in data["what_to_do"]
    assert "max_concurrent_series" in data["what_to_do"]


def test_low_error_file_says_each_thing_once(start_watcher, roots, tmp_path) -> None:
    w = start_watcher(max_attempts=1)
    files = write_series(tmp_path / "src", 5, names="ordered")
    for f in files[:2] + files[3:]:  # slice 3 of 5 is missing
        (roots / "exam").mkdir(exist_ok=True)
        shutil.copyfile(f, roots / "exam" / f.name)
    assert wait_for(lambda: len(error_files(roots)) == 1, timeout=15) and w.wait_idle(10)
    what = json.loads(error_files(roots)[0].read_text())["what_to_do"]
    assert what.lower().count("tries again") == 1, what
    sentences = [s.strip().lower() for s in what.split(".") if s.strip()]
    assert len(sentences) == len(set(sentences)), what
