"""Fault tests with the watcher as a real process (the command line ``edgeseg watch`` run by the test-only launcher
``tests/helpers/fake_watcher.py``, which gives its watcher the fake segmenter): kill -9 at random moments, restart,
and every series still ends with exactly one complete result; SIGTERM stops cleanly."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import fake_watcher
from watch_helpers import error_files, results, wait_for, write_series

from edgeseg.errors import ConfigError
from edgeseg.runtime.read import fingerprint, stamp_files
from edgeseg.runtime.watch.store import DONE, JobStore

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, roots: Path, **extra: object) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    lines = {
        "roots": f"[{roots}]", "bundle": str(bundle), "quiet_period_s": "0.3", "state_dir": str(tmp_path / "state"),
        "log_dir": str(tmp_path / "logs"), "time_budget_s": "null", "stop_grace_s": "2",
        "max_attempts": "100",  # crash loops are given up after max_attempts; not the subject here
    }
    lines.update({k: str(v) for k, v in extra.items()})
    path = tmp_path / "watch_config.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()), encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGESEG_")}


def _start(config: Path, delay: float, *extra: str) -> subprocess.Popen:
    """``edgeseg -q watch --config CONFIG`` as a process whose watcher segments with the fake (``delay`` s each)."""
    return subprocess.Popen(fake_watcher.command("-q", "watch", "--config", str(config), *extra, delay_s=delay),
                            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every input file (outputs excluded)."""
    from edgeseg.runtime.naming import is_edgeseg_output

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not is_edgeseg_output(p.relative_to(root))}


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path, real_mri: Path) -> None:
    rng = random.Random(1234)
    roots = tmp_path / "incoming"
    roots.mkdir()
    pool = tmp_path / "pool"
    # series that arrive over time: DICOM series (two interleaved in one folder) and NIfTI files
    arrivals: list[list[tuple[Path, Path]]] = []
    for i in range(6):
        files = write_series(pool / f"s{i}", 4 + i % 3, description=f"series {i}", seed=i)
        folder = roots / ("shared_exam" if i < 2 else f"exam{i}")
        arrivals.append([(f, folder / f.name) for f in files])
    for i in range(3):
        arrivals.append([(real_mri, roots / f"nifti{i}" / f"case{i}.nii.gz")])
    # two series are there before the first start
    for pairs in arrivals[:2]:
        for src, dst in pairs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    pending = arrivals[2:]
    config = _config(tmp_path, roots)
    t0 = time.monotonic()
    kills = 0
    while kills < 20:
        proc = _start(config, delay=0.2)
        if pending and kills % 2 == 0:  # a series arrives while the watcher runs, slice by slice
            for src, dst in pending.pop(0):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                time.sleep(0.02)
        time.sleep(rng.uniform(0.2, 1.4))
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.wait(timeout=10)
        kills += 1
    for pairs in pending:
        for src, dst in pairs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    before = _hashes(roots)
    final = subprocess.run(fake_watcher.command("-q", "watch", "--config", str(config), "--once"),
                           cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, final.stderr[-3000:]
    assert time.monotonic() - t0 < 90

    assert _hashes(roots) == before  # inputs byte-identical
    assert error_files(roots) == []
    leftovers = [p for p in roots.rglob(".*") if ".edgeseg" in p.name]
    assert leftovers == [], leftovers
    found = results(roots)
    assert len(found) == len(arrivals) == 9  # exactly one result per series: none lost, none duplicated
    for result in found:
        m = json.loads((result / "manifest.json").read_text())
        inputs = [result.parent / rel for rel, _, _ in m["inputs"]]
        assert fingerprint(stamp_files(result.parent, inputs)) == m["input_fingerprint"]
    with JobStore(tmp_path / "state" / "jobs.sqlite3", readonly=True) as store:
        rows = store.rows()
    assert len(rows) == 9 and {r.state for r in rows} == {DONE}
    assert sorted(Path(r.output_path) for r in rows) == found


@pytest.mark.slow
def test_sigterm_lets_the_running_series_finish_then_exits_cleanly(tmp_path: Path) -> None:
    roots = tmp_path / "incoming"
    write_series(roots / "exam", 3)
    config = _config(tmp_path, roots, stop_grace_s=20)
    proc = _start(config, 1.5)  # the fake takes 1.5 s
    state = tmp_path / "state"
    assert wait_for(lambda: _running(state), timeout=20), proc.stderr.read().decode() if proc.poll() else ""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert len(results(roots)) == 1  # it finished the series before exiting
    beat = json.loads((state / "watcher.json").read_text())
    assert beat["stopped"] is True
    with JobStore(state / "jobs.sqlite3", readonly=True) as store:
        assert [r.state for r in store.rows()] == [DONE]


def _running(state: Path) -> bool:
    if not (state / "jobs.sqlite3").is_file():
        return False
    try:  # the watcher may be creating the store right now
        with JobStore(state / "jobs.sqlite3", readonly=True) as store:
            return store.counts()["running"] == 1
    except (ConfigError, sqlite3.Error):
        return False
