"""An interrupted export leaves no hidden partial folder (issue 19: one of 375 MB was left behind): SIGTERM and
Ctrl+C unwind through the pipeline's clean-up; a folder left by an export killed outright is removed by the next
export to the same place."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgeseg.export.pipeline import remove_stale_partials

REPO = Path(__file__).resolve().parents[2]

#: the real ``edgeseg export`` command line, with the pipeline's work replaced by a long wait that fills the
#: partial folder first (the test is about the clean-up, not the conversion)
_CHILD = """
import sys, time
from pathlib import Path
import edgeseg.export.pipeline as pipeline

def slow(variants, root, *args):
    (Path(root) / "default").mkdir()
    (Path(root) / "default" / "fp32.bin").write_bytes(b"x" * 4096)
    print("STARTED", flush=True)
    time.sleep(120)

pipeline._export_into = slow
from edgeseg.cli import main
sys.exit(main(["-q", "export", sys.argv[1], "--out", sys.argv[2], "--calibration", sys.argv[3]]))
"""


def _partials(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.partial-*"))


def test_sigterm_removes_the_partial_folder(tmp_path: Path) -> None:
    out = tmp_path / "bundles" / "b"
    (tmp_path / "model").mkdir()
    (tmp_path / "calib").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "model"), str(out), str(tmp_path / "calib")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "STARTED", proc.stderr.read() if proc.stderr else ""
        assert len(_partials(out)) == 1
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130  # interrupted
    assert _partials(out) == [] and not out.exists()


def test_a_partial_folder_of_a_killed_export_is_removed_by_the_next(tmp_path: Path) -> None:
    out = tmp_path / "b"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".b.partial-{int(dead.stdout)}-abc123"
    (stale / "default").mkdir(parents=True)
    live = tmp_path / f".b.partial-{os.getppid()}-def456"  # a running export's: left alone
    live.mkdir()
    old_style = tmp_path / ".b.partial-xyz"  # no pid: cannot tell, left alone
    old_style.mkdir()
    time.sleep(0.1)
    assert remove_stale_partials(out) == [stale]
    assert not stale.exists() and live.exists() and old_style.exists()
