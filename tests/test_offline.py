"""edgeseg makes no network attempt and writes nothing under the user's home (issue 9, finding 6).

``import openvino`` used to send a usage event (OpenVINO telemetry) and write a client id under ``~/intel/`` on
every ``segment``, ``watch`` and ``doctor``. Each test runs edgeseg in a fresh interpreter with HOME set to a
temporary folder, the CI variables that make OpenVINO's telemetry stay quiet removed, and an audit hook
(installed before anything is imported; forked children inherit it) that records every network attempt into a
file.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: run first in the probe interpreter: records the audit events of a network attempt (a name lookup, a connect,
#: a datagram, an urllib request) to the file argv[1]. Creating and binding a socket is not one: urllib3 binds a
#: loopback socket at import to probe for IPv6.
TRACE = r'''
import os, sys
_fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
_NETWORK = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
            "socket.getnameinfo", "socket.sendto", "socket.sendmsg", "urllib.Request"}
def _trace(event, args):
    if event in _NETWORK:
        os.write(_fd, (f"pid {os.getpid()}: {event} {args!r}"[:400] + "\n").encode())
sys.addaudithook(_trace)
'''

#: what ``edgeseg doctor`` does with OpenVINO: the runtime's shared Core, its devices and their capabilities
DOCTOR = r'''
import edgeseg.runtime
from edgeseg.runtime.infer import engine
print(engine.available_devices(), engine._supports_bf16("CPU"))
'''

#: ``edgeseg segment`` on the packaged demo MRI with the packaged demo bundle
SEGMENT = r'''
from edgeseg.cli import main
raise SystemExit(main(["-q", "segment", sys.argv[2], "--bundle", "demo", "--no-cache", "--no-preview"]))
'''


def _run_traced(code: str, home: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``code`` after the tracer in a fresh interpreter with HOME=``home``; returns the result and the
    network events recorded (by the process and anything it forked)."""
    events_file = home.parent / f"{home.name}-events.txt"
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "TF_BUILD", "JENKINS_URL"}}
    env.update(HOME=str(home), USERPROFILE=str(home), LOCALAPPDATA=str(home))
    proc = subprocess.run([sys.executable, "-c", TRACE + code, str(events_file), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    events = events_file.read_text().splitlines() if events_file.exists() else []
    return proc, events


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the control forks like OpenVINO's telemetry sender")
def test_the_tracer_sees_lookups_in_forked_children(home: Path):
    """Control: the tracer records a name lookup made in a forked child (where the telemetry sender runs)."""
    code = ("import socket\npid = os.fork()\nif pid == 0:\n    try:\n        socket.getaddrinfo('localhost', 80)\n"
            "    finally:\n        os._exit(0)\nos.waitpid(pid, 0)\n")
    proc, events = _run_traced(code, home)
    assert proc.returncode == 0, proc.stderr
    assert any("socket.getaddrinfo" in e and "localhost" in e for e in events), events


def test_doctor_path_makes_no_network_attempt_and_writes_nothing_under_home(home: Path):
    proc, events = _run_traced(DOCTOR, home)
    assert proc.returncode == 0, proc.stderr
    assert "CPU" in proc.stdout
    assert events == [], f"network attempts: {events}"
    assert not (home / "intel").exists(), sorted(str(p) for p in home.rglob("*"))


def test_segment_makes_no_network_attempt_and_writes_nothing_under_home(home: Path, real_mri: Path):
    series = home.parent / "exam" / "mri.nii.gz"
    series.parent.mkdir()
    shutil.copy(real_mri, series)
    proc, events = _run_traced(SEGMENT, home, str(series))
    assert proc.returncode == 0, proc.stderr
    assert (series.parent / "mri.edgeseg" / "seg.nii.gz").is_file(), sorted(p.name for p in series.parent.iterdir())
    assert events == [], f"network attempts: {events}"
    assert not (home / "intel").exists(), sorted(str(p) for p in home.rglob("*"))
