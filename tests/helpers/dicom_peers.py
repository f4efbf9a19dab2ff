"""Real third-party DICOM peers for the tests of edgeseg's DICOM node: DCMTK, pynetdicom's apps, and Orthanc.

The node's tests must talk to programs that are not ours. This module starts and drives them, all on 127.0.0.1
with bounded timeouts (every subprocess call has one; every wait has a deadline), so no test can hang:

* :func:`require_peer`: how a test asks for a tool. A missing DCMTK or Orthanc *skips* the test with a reason that
  names the Debian packages (``apt-get install dcmtk orthanc``). That reason is deliberately not in
  ``EXPECTED_SKIPS`` of tests/conftest.py, so the unexpected-skip gate fails the run: CI (``.ci/run`` installs both)
  can never pass without these tests having run.
* :class:`OrthancPacs`: a private Orthanc (Debian ``/usr/sbin/Orthanc``) in a temporary folder, as a PACS that only
  accepts the calling AE titles it is configured with, read back over its REST API (standard library only).
* :func:`dcmtk_storescu`, :func:`dcmtk_echoscu`, :class:`DcmtkStorescp`: DCMTK's command-line SCUs and SCP.
* :func:`pynetdicom_storescu`, :func:`pynetdicom_echoscu`: pynetdicom's own apps (``python -m pynetdicom ...``).

Facts these rely on (checked here against Debian's Orthanc 1.10.1, DCMTK 3.6.7 and pynetdicom 3.0.4):

* Orthanc accepts an association from an unknown calling AE as soon as *any* ``DicomAlwaysAllow*`` option is true
  (``DicomAlwaysAllowEcho`` is true by default) and then answers its first C-STORE with an A-ABORT (no failure
  status; the log says 'AET is not listed in configuration option "DicomModalities"'); with all of them false it
  rejects the association (A-ASSOCIATE-RJ, rejected permanent, "Calling AE Title Not Recognized"), and so it does
  for a known AE calling from another host than its entry's when ``DicomCheckModalityHost`` is true.
  :class:`OrthancPacs` sets them all false unless asked otherwise, so an unknown AE is refused at association, as
  strict PACS do.
* Orthanc answers C-STORE only after the instance is in its index: REST sees an instance as soon as the SCU has
  its success status. Its REST lists (``/studies``, ``/series``, ``/instances``) return Orthanc IDs (SHA-1 based
  hashes, not DICOM UIDs) unless ``?expand`` is given; ``/tools/find`` returns IDs unless ``"Expand": true``.
  ``MainDicomTags`` of an expanded resource hold only that level's main tags (SOPInstanceUID at instance level,
  SeriesInstanceUID at series level; the parent's UIDs are not repeated), so UIDs of other levels are read from
  the parent resource or from the instance's tags. ``/instances/{id}/simplified-tags`` gives every tag by keyword
  (sequences as lists of dicts); values of more than 256 bytes (pixel data, long arrays) come back as null.
* DCMTK 3.6.7's storescu proposes uncompressed transfer syntaxes only, unless told otherwise, and cannot decode a
  compressed file to send it uncompressed; :func:`dcmtk_storescu` therefore proposes each file's own syntax through
  an association configuration file. storescu exits non-zero when the association is refused or aborted or a
  C-STORE is not successful. pynetdicom's storescu app exits 1 only when the association fails: a refused
  C-STORE still exits 0 (read its ``-v`` output or, better, the receiving side).
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

LOOPBACK = "127.0.0.1"

#: seconds a subprocess SCU may run before it is killed (each DICOM timeout inside it is shorter)
DEFAULT_TIMEOUT = 20.0

#: peer name -> (executable looked up on PATH or absolute path, Debian package, what it is)
_PEERS: dict[str, tuple[str, str, str]] = {
    "storescu": ("storescu", "dcmtk", "DCMTK's Storage SCU"),
    "storescp": ("storescp", "dcmtk", "DCMTK's Storage SCP"),
    "echoscu": ("echoscu", "dcmtk", "DCMTK's Verification SCU"),
    "findscu": ("findscu", "dcmtk", "DCMTK's Query SCU"),
    "dcmdump": ("dcmdump", "dcmtk", "DCMTK's dumper"),
    "orthanc": ("/usr/sbin/Orthanc", "orthanc", "the Orthanc PACS"),
}

#: the one install command every missing-peer message names (CI's .ci/run runs the same)
INSTALL_HINT = "apt-get install dcmtk orthanc"


def peer_executable(name: str) -> str | None:
    """Path of the peer ``name`` (a key of the table above, e.g. "storescu", "orthanc"), or None if not installed.
    Orthanc is looked up at /usr/sbin/Orthanc (Debian's path, not on a normal user's PATH) and then on PATH."""
    exe = _PEERS[name][0]
    if os.path.isabs(exe):
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
        return shutil.which(os.path.basename(exe))
    return shutil.which(exe)


def missing_peer_reason(name: str) -> str:
    """The skip reason for a missing peer ``name``: what is missing and the Debian packages to install. It is not
    an expected skip (tests/conftest.py), so a run that skips for it fails."""
    if name == "pynetdicom":
        return ("pynetdicom (a dependency of edgeseg) is not importable: pip install -e \".[test]\" "
                "(a DICOM peer the node tests need)")
    exe, package, what = _PEERS[name]
    return (f"DICOM peer {os.path.basename(exe)} ({what}, Debian package {package}) is missing: {INSTALL_HINT} "
            "(.ci/run installs them; CI fails on this skip)")


def require_peer(name: str) -> str:
    """The executable of the peer ``name`` ("storescu", "storescp", "echoscu", "findscu", "dcmdump", "orthanc"), or
    "pynetdicom" (returns ``sys.executable``, which runs its apps). A missing one skips the calling test with
    :func:`missing_peer_reason`, loudly: that skip is not in EXPECTED_SKIPS, so the run still fails."""
    if name == "pynetdicom":
        if importlib.util.find_spec("pynetdicom") is None:
            pytest.skip(missing_peer_reason(name))
        return sys.executable
    if name not in _PEERS:
        raise ValueError(f"unknown DICOM peer {name!r}; known: {sorted(_PEERS)} and 'pynetdicom'")
    found = peer_executable(name)
    if found is None:
        pytest.skip(missing_peer_reason(name))
    return found


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the OS hands to outgoing connections (Linux's ip_local_port_range; IANA's 49152-65535 elsewhere,
    Windows' and macOS' default)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now, chosen below the ephemeral range.

    A port the OS picks (bind to port 0) lies in the ephemeral range, where any outgoing connection of the test run
    (a REST request, an SCU) can take it as its source port before the server binds it: CI once lost Orthanc's DICOM
    port that way. Below that range only listeners bind, and each of them got its port from here, checked free."""
    low = 20000
    high = min(ephemeral_port_range()[0], 49152) - 1
    if high <= low:  # an ephemeral range that starts this low leaves no room: the OS chooses
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            return int(sock.getsockname()[1])
    pick = random.SystemRandom()  # independent of any seed a test sets
    for _ in range(200):
        port = pick.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:  # in use, or in TIME_WAIT from an earlier test's server
                continue
            return port
    raise RuntimeError(f"no free TCP port on {LOOPBACK} between {low} and {high} after 200 tries")


def _port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _log_tail(path: Path, chars: int = 4000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return text[-chars:]


def _stop(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM ``proc``, wait up to ``grace`` seconds, then SIGKILL it and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _run(cmd: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with captured text output; a run past ``timeout`` seconds is killed and returned with exit
    status -9 and what it had printed (never raises for a timeout, so a test reports it like any failure)."""
    try:
        return subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        def text(value: Any) -> str:
            return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")
        return subprocess.CompletedProcess(list(cmd), -9, text(exc.stdout),
                                           text(exc.stderr) + f"\n[killed after {timeout} s]")


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """One message with a finished command, its exit status and output, for assertion messages."""
    return (f"{' '.join(map(str, proc.args))}\nexit status {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------------------------------------------------------
# DCMTK


def _dicom_timeouts(timeout: float) -> list[str]:
    """DCMTK's connection, ACSE, DIMSE and socket timeouts, each below the process timeout ``timeout``."""
    inner = str(max(1, int(timeout * 0.75)))
    return ["-to", inner, "-ta", inner, "-td", inner, "-ts", inner]


#: the uncompressed transfer syntaxes proposed beside each file's own (explicit and implicit VR little endian)
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def storescu_association_config(files: Iterable[str | os.PathLike[str]], path: str | os.PathLike[str]) -> str:
    """Write a DCMTK association configuration (the ``-xf`` file format of /etc/dcmtk/storescu.cfg) to ``path``
    that proposes, for each SOP class among ``files``, one presentation context per transfer syntax the files of
    that class are encoded in, plus one with the uncompressed syntaxes; returns the profile name to pass with it.

    Why: DCMTK 3.6.7's storescu proposes only uncompressed syntaxes by default, and its ``-x?`` options add one
    compressed syntax for *every* SOP class; a compressed file whose syntax is not accepted fails with "unable to
    convert dataset" (storescu decodes nothing). With this file every file travels in its own syntax."""
    import pydicom

    pairs: dict[str, list[str]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        syntaxes = pairs.setdefault(str(ds.SOPClassUID), [])
        ts = str(ds.file_meta.TransferSyntaxUID)
        if ts not in _UNCOMPRESSED and ts not in syntaxes:
            syntaxes.append(ts)
    if sum(1 + len(ts) for ts in pairs.values()) > 128:
        raise ValueError("the files need more than 128 presentation contexts; send them in several calls")
    lines = ["[[TransferSyntaxes]]", "[Uncompressed]"]
    lines += [f"TransferSyntax{i} = {uid}" for i, uid in enumerate(_UNCOMPRESSED, 1)]
    all_compressed = sorted({ts for syntaxes in pairs.values() for ts in syntaxes})
    for n, ts in enumerate(all_compressed, 1):
        lines += [f"[TS{n}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[FileContexts]"]
    n = 0
    for sop_class, syntaxes in pairs.items():
        for key in [f"TS{all_compressed.index(ts) + 1}" for ts in syntaxes] + ["Uncompressed"]:
            n += 1
            lines.append(f"PresentationContext{n} = {sop_class}\\{key}")
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = FileContexts", ""]
    Path(path).write_text("\n".join(lines), encoding="ascii")
    return "Files"


def dcmtk_storescu(host: str, port: int, files: Iterable[str | os.PathLike[str]], *, calling_aet: str = "STORESCU",
                   called_aet: str = "ANY-SCP", timeout: float = DEFAULT_TIMEOUT, files_syntax: bool = True,
                   extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with DCMTK's storescu in one association; returns the finished process (``-v`` output).

    ``files_syntax`` (default): propose exactly the files' SOP classes, each in the files' own transfer syntaxes and
    uncompressed (:func:`storescu_association_config`), so compressed files go as they are; False: storescu's own
    proposal (all storage SOP classes, uncompressed only, unless ``extra`` has a ``-x?`` option). Exit status 0
    only if every C-STORE succeeded; a rejected or aborted association or a failed store is non-zero (storescu
    stops at the first failure unless ``extra`` has ``--no-halt``). ``timeout``: seconds before the process is
    killed (its DICOM timeouts are shorter)."""
    exe = require_peer("storescu")
    paths = [os.fspath(f) for f in files]
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp:
        proposal: list[str] = []
        if files_syntax:
            config = Path(tmp) / "storescu.cfg"
            proposal = ["-xf", os.fspath(config), storescu_association_config(paths, config)]
        cmd = [exe, "-v", "-aet", calling_aet, "-aec", called_aet, *_dicom_timeouts(timeout), *proposal, *extra,
               host, str(port), *paths]
        return _run(cmd, timeout)


def dcmtk_echoscu(host: str, port: int, *, calling_aet: str = "ECHOSCU", called_aet: str = "ANY-SCP",
                  timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """One C-ECHO with DCMTK's echoscu; returns the finished process (exit status 0 = association and echo
    succeeded)."""
    exe = require_peer("echoscu")
    cmd = [exe, "-v", "-aet", calling_aet, "-aec", called_aet, *_dicom_timeouts(timeout), host, str(port)]
    return _run(cmd, timeout)


def _wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class DcmtkStorescp:
    """DCMTK's storescp as a Storage SCP on a free port of 127.0.0.1, receiving into ``out_dir``.

    Options: ``+xa`` accepts every transfer syntax DCMTK knows (compressed ones are stored as received, ``+t=``
    being the default), ``-uf`` (the default) names each file ``<modality prefix>.<SOPInstanceUID>`` and ``-fe
    .dcm`` appends ``.dcm``, so a received SEG left under a test's tmp_path is checked by dciodvfy like any other
    SEG (tests/conftest.py). storescp accepts any calling AE; ``--aetitle`` is its own (called) AE title. It runs
    in single-process mode; its ``-v`` log is :attr:`log_path`. A file counts as received once storescp has saved
    it completely: ``--exec-on-reception`` (synchronous, ``-xs``) touches a marker of that name in
    :attr:`done_dir` after each save. Use as a context manager::

        with DcmtkStorescp(tmp_path / "received", aet="STORESCP") as scp:
            pynetdicom_storescu(LOOPBACK, scp.port, files, called_aet=scp.aet)
            received = scp.wait_for(len(files))
    """

    def __init__(self, out_dir: str | os.PathLike[str], *, aet: str = "STORESCP", port: int | None = None,
                 startup_timeout: float = 10.0, extra: Sequence[str] = (), accept_all: bool = True) -> None:
        self.out_dir = Path(out_dir)
        #: False: no ``+xa`` (an association profile given in ``extra`` with ``-xf`` says what is accepted)
        self.accept_all = accept_all
        self.aet = aet
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.startup_timeout = startup_timeout
        self.extra = tuple(extra)
        self.log_path = self.out_dir.parent / f"storescp-{self.port}.log"
        self.done_dir = self.out_dir.parent / f"storescp-{self.port}-saved"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def __enter__(self) -> DcmtkStorescp:
        exe = require_peer("storescp")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # closed in __exit__
        # storescp runs the command with /bin/sh -c after saving each file; #f is the saved file's name
        marker = f"touch '{self.done_dir}/#f'"
        cmd = [exe, "-v", "--aetitle", self.aet, "-od", os.fspath(self.out_dir), *(["+xa"] if self.accept_all else []),
               "-uf", "-fe", ".dcm",
               "-ta", "10", "-td", "10", "-ts", "10", "-xcr", marker, "-xs", *self.extra, str(self.port)]
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            # Readiness: the port accepts a TCP connection (storescp logs the empty connection and goes on).
            if not _wait_until(lambda: self._proc is not None and (self._proc.poll() is not None
                                                                   or _port_open(self.port)), self.startup_timeout):
                raise RuntimeError(f"storescp did not listen on port {self.port} within {self.startup_timeout} s; "
                                   f"log:\n{self.log()}")
            if self._proc.poll() is not None:
                raise RuntimeError(f"storescp exited with status {self._proc.returncode} at start (port "
                                   f"{self.port} taken?); log:\n{self.log()}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None:
            _stop(self._proc, grace=5.0)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        """The end of storescp's log (for failure messages)."""
        return _log_tail(self.log_path)

    def files(self) -> list[Path]:
        """The files received and completely saved so far, sorted by name (``<prefix>.<SOPInstanceUID>.dcm``)."""
        saved = {p.name for p in self.done_dir.iterdir()}
        return sorted(p for p in self.out_dir.iterdir() if p.is_file() and p.name in saved)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Path]:
        """Wait until at least ``n`` files are received and completely saved; returns them (:meth:`files`). Fails
        the test with storescp's log if they do not arrive within ``timeout`` seconds."""
        if not _wait_until(lambda: len(self.files()) >= n, timeout):
            pytest.fail(f"storescp saved {len(self.files())} of {n} files within {timeout} s in "
                        f"{self.out_dir}; log:\n{self.log()}", pytrace=False)
        return self.files()

    def sop_instance_uids(self) -> list[str]:
        """SOPInstanceUID of every received file, sorted."""
        import pydicom

        return sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.files())


# ---------------------------------------------------------------------------------------------------------------
# pynetdicom's apps


def _pynetdicom_timeouts(timeout: float) -> list[str]:
    inner = str(max(1, int(timeout * 0.75)))
    return ["-ta", inner, "-td", inner, "-tn", inner]


def pynetdicom_storescu(host: str, port: int, files: Iterable[str | os.PathLike[str]], *,
                        calling_aet: str = "STORESCU", called_aet: str = "ANY-SCP",
                        timeout: float = DEFAULT_TIMEOUT,
                        extra: Sequence[str] = ("-cx",)) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with pynetdicom's storescu app (``python -m pynetdicom storescu -v``) in one association.

    ``-cx`` (default ``extra``) proposes exactly each file's SOP class and transfer syntax, so compressed files go
    as they are (without it the app proposes uncompressed syntaxes only). Its exit status is 1 only when the
    association fails; a refused or aborted C-STORE still exits 0: check the receiver, or the "Status: 0x...." lines
    of the output (:func:`pynetdicom_store_statuses`). When the peer aborts during a C-STORE the app only notices
    after its DIMSE timeout (``timeout`` x 0.75): give such calls a short ``timeout``."""
    python = require_peer("pynetdicom")
    cmd = [python, "-m", "pynetdicom", "storescu", "-v", "-aet", calling_aet, "-aec", called_aet,
           *_pynetdicom_timeouts(timeout), *extra, host, str(port), *(os.fspath(f) for f in files)]
    return _run(cmd, timeout)


def pynetdicom_store_statuses(proc: subprocess.CompletedProcess[str]) -> list[int]:
    """The C-STORE response statuses that pynetdicom's storescu app logged with ``-v`` ("Received Store Response
    (Status: 0x0000 - Success)"), in order."""
    import re

    text = proc.stdout + proc.stderr
    return [int(m, 16) for m in re.findall(r"Received Store Response.*?Status: 0x([0-9A-Fa-f]{4})", text)]


def pynetdicom_echoscu(host: str, port: int, *, calling_aet: str = "ECHOSCU", called_aet: str = "ANY-SCP",
                       timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """One C-ECHO with pynetdicom's echoscu app (``-v``); exit status 0 = association established (the echo's
    status is in the output: "Received Echo Response (Status: Success)")."""
    python = require_peer("pynetdicom")
    cmd = [python, "-m", "pynetdicom", "echoscu", "-v", "-aet", calling_aet, "-aec", called_aet,
           *_pynetdicom_timeouts(timeout), host, str(port)]
    return _run(cmd, timeout)


# ---------------------------------------------------------------------------------------------------------------
# Orthanc


class OrthancError(RuntimeError):
    """Orthanc failed to start, or a REST call failed; the message has the call and the end of Orthanc's log."""


class OrthancPacs:
    """A private Orthanc (Debian's /usr/sbin/Orthanc) as a PACS, for one test or module; a context manager.

    Everything lives in ``workdir`` (a new temporary folder if None, removed on exit): ``orthanc.json`` (the whole
    configuration: nothing of /etc/orthanc is read, no plugins are loaded), ``storage/`` (StorageDirectory and
    IndexDirectory) and ``orthanc.log`` (:attr:`log_path`, Orthanc's stderr with ``--verbose``). Its DICOM port and
    HTTP port are free ports of 127.0.0.1 (:attr:`dicom_port`, :attr:`http_port`); the REST API is :attr:`url`,
    without authentication (RemoteAccessAllowed is false, so only loopback clients are served).

    Who may talk to it: ``modalities`` maps a name to ``(AET, host, port)`` of each allowed peer (Orthanc's
    ``DicomModalities``). Any other calling AE is refused: all ``DicomAlwaysAllow*`` options are false, so Orthanc
    rejects the association itself (``always_allow_echo=True`` restores Orthanc's default of answering C-ECHO
    from anyone; an unknown AE's C-STORE is then answered with an A-ABORT). ``DicomCheckCalledAet`` is true: a
    call to another AE title than ``aet`` is rejected. ``check_modality_host`` (``DicomCheckModalityHost``, default
    true): the peer's IP address must also match its entry's host (else the association is rejected as above).
    ``extra_config`` entries override or add Orthanc options.

    Startup waits until ``GET /system`` answers (Orthanc opens its DICOM port before its HTTP server), at most
    ``startup_timeout`` seconds; failures raise :class:`OrthancError` with the log. Exit: SIGTERM, wait, SIGKILL.
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *, aet: str = "PACS",
                 modalities: Mapping[str, tuple[str, str, int]] | None = None, always_allow_echo: bool = False,
                 check_modality_host: bool = True, startup_timeout: float = 30.0,
                 extra_config: Mapping[str, Any] | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="orthanc-"))
        self.aet = aet
        self.host = LOOPBACK
        self.modalities = dict(modalities or {})
        self.always_allow_echo = always_allow_echo
        self.check_modality_host = check_modality_host
        self.startup_timeout = startup_timeout
        self.extra_config = dict(extra_config or {})
        self.dicom_port = free_port()
        self._choose_http_port()
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def _choose_http_port(self) -> None:
        """A free HTTP port other than the DICOM port, and the REST URL on it."""
        self.http_port = free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self.url = f"http://{LOOPBACK}:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """The complete Orthanc configuration this instance runs with."""
        storage = self.workdir / "storage"
        config: dict[str, Any] = {
            "Name": f"edgeseg-test-{self.aet}",
            "StorageDirectory": os.fspath(storage),
            "IndexDirectory": os.fspath(storage),
            "StorageCompression": False,
            "Plugins": [],
            "ConcurrentJobs": 1,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpThreadsCount": 4,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": self.check_modality_host,
            "DicomAlwaysAllowEcho": self.always_allow_echo,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowFindWorklist": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalitiesInDatabase": False,
            "DicomModalities": {name: [aet, host, int(port)] for name, (aet, host, port) in self.modalities.items()},
            "DicomScpTimeout": 10,
            "DicomScuTimeout": 10,
            "UnknownSopClassAccepted": False,
            "StableAge": 1,
            "SaveJobs": False,
            "OverwriteInstances": False,
            "HttpsVerifyPeers": False,
            "DeidentifyLogs": False,
            "LoadPrivateDictionary": False,
        }
        config.update(self.extra_config)
        return config

    # -- life cycle --

    def __enter__(self) -> OrthancPacs:
        exe = require_peer("orthanc")
        (self.workdir / "storage").mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
            self._log = open(self.log_path, "wb")  # closed in __exit__
            self._proc = subprocess.Popen([exe, "--verbose", "--no-jobs", os.fspath(self.config_path)],
                                          stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.workdir)
            try:
                self._wait_ready()
                return self
            except OrthancError:
                lost_http_port = "port of the HTTP server is privileged or already in use" in self.log()
                if not lost_http_port or attempt == 2:
                    self.__exit__(None, None, None)
                    raise
                self._stop_process()
                # free_port()'s race: another listener (a process outside the tests) took the HTTP port between
                # the choice and Orthanc's bind; only the REST client uses that port, so another one is safe to take
                self._choose_http_port()
            except BaseException:
                self.__exit__(None, None, None)
                raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise OrthancError(f"Orthanc exited with status {self._proc.returncode} at start (config "
                                   f"{self.config_path}); log:\n{self.log()}")
            try:
                system = self._request("GET", "/system", timeout=2.0)
                if isinstance(system, dict) and system.get("DicomAet") == self.aet:
                    return
                last = f"unexpected /system answer {system!r} (another server on port {self.http_port}?)"
            except (OSError, OrthancError) as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise OrthancError(f"Orthanc's REST API {self.url}/system did not answer within "
                                   f"{self.startup_timeout} s ({last}); log:\n{self.log()}")
            time.sleep(0.1)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop_process()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_process(self) -> None:
        if self._proc is not None:
            _stop(self._proc, grace=10.0)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        """The end of Orthanc's log (for failure messages)."""
        return _log_tail(self.log_path)

    # -- REST --

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            if isinstance(body, (bytes, bytearray)):
                data = bytes(body)
                headers["Content-Type"] = "application/dicom"
            else:
                data = json.dumps(body).encode("utf-8")
                headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # loopback only
                payload = response.read()
                content_type = response.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")[:2000]
            raise OrthancError(f"{method} {path} -> HTTP {exc.code}: {detail}") from None
        if content_type == "application/json":
            return json.loads(payload) if payload else None
        if content_type.startswith("text/"):
            return payload.decode("utf-8", errors="replace")
        return payload

    def rest(self, path: str, method: str = "GET", body: Any = None, timeout: float = 10.0) -> Any:
        """Call Orthanc's REST API: ``path`` such as "/studies" or "/instances/<id>/simplified-tags"; ``body``: a
        JSON-able value (POST/PUT) or DICOM bytes. Returns decoded JSON for application/json answers, str for
        text/plain ones (e.g. ``/instances/{id}/metadata/RemoteAET``), bytes otherwise (``/instances/{id}/file``);
        an HTTP error raises :class:`OrthancError` with the end of Orthanc's log."""
        try:
            return self._request(method, path, body, timeout)
        except OrthancError as exc:
            raise OrthancError(f"{exc}\nOrthanc log:\n{self.log()}") from None

    def studies(self) -> list[dict[str, Any]]:
        """Every study as Orthanc describes it (``GET /studies?expand``): dicts with "ID", "MainDicomTags"
        (StudyInstanceUID, StudyDate, ...), "PatientMainDicomTags", "Series" (Orthanc IDs), "IsStable"."""
        return list(self.rest("/studies?expand"))

    def series(self) -> list[dict[str, Any]]:
        """Every series (``GET /series?expand``): "ID", "MainDicomTags" (SeriesInstanceUID, Modality,
        SeriesDescription, ...), "ParentStudy", "Instances" (Orthanc IDs)."""
        return list(self.rest("/series?expand"))

    def series_uids(self) -> list[str]:
        """SeriesInstanceUID of every series Orthanc holds, sorted."""
        return sorted(str(s["MainDicomTags"]["SeriesInstanceUID"]) for s in self.series())

    def instances(self, series_uid: str) -> list[dict[str, Any]]:
        """The instances of the series ``series_uid``: ``POST /tools/find`` at level Instance on its
        SeriesInstanceUID with ``"Expand": true`` (without it Orthanc answers IDs only). Each: "ID", "MainDicomTags"
        (SOPInstanceUID, InstanceNumber, ...: instance level only), "ParentSeries", "FileSize", "IndexInSeries"."""
        found = self.rest("/tools/find", "POST", {"Level": "Instance", "Expand": True,
                                                   "Query": {"SeriesInstanceUID": series_uid}})
        return list(found)

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """All tags of one instance by keyword (``GET /instances/{id}/simplified-tags``): sequences are lists of
        dicts, multi-valued strings are backslash-separated, values of more than 256 bytes (pixel data) are null."""
        return dict(self.rest(f"/instances/{orthanc_id}/simplified-tags"))

    def sop_instance_uids(self) -> list[str]:
        """SOPInstanceUID of every instance Orthanc holds, sorted (``GET /instances?expand``)."""
        return sorted(str(i["MainDicomTags"]["SOPInstanceUID"]) for i in self.rest("/instances?expand"))

    def count_instances(self) -> int:
        """How many instances Orthanc holds (``GET /statistics``, "CountInstances")."""
        return int(self.rest("/statistics")["CountInstances"])

    def instance_metadata(self, orthanc_id: str, name: str) -> str:
        """One metadata item Orthanc recorded at reception (``GET /instances/{id}/metadata/{name}``), e.g.
        "RemoteAET" (the calling AE title of the sender), "CalledAET", "RemoteIP", "TransferSyntax" (the UID the
        instance was received and stored in), "SopClassUid", "ReceptionDate", "Origin" ("DicomProtocol" for
        C-STORE, "RestApi" for uploads)."""
        return str(self.rest(f"/instances/{orthanc_id}/metadata/{name}"))

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of one instance, byte for byte as received (``GET /instances/{id}/file``)."""
        data = self.rest(f"/instances/{orthanc_id}/file")
        if isinstance(data, (bytes, bytearray)):
            return bytes(data)
        raise OrthancError(f"/instances/{orthanc_id}/file answered JSON, not DICOM: {data!r}")

    def wait_for_instances(self, n: int, timeout: float = 10.0) -> int:
        """Wait until Orthanc holds at least ``n`` instances (at most ``timeout`` s); returns the count. Orthanc
        indexes an instance before its C-STORE response, so after a successful SCU this returns at once."""
        count = 0

        def enough() -> bool:
            nonlocal count
            count = self.count_instances()
            return count >= n

        if not _wait_until(enough, timeout, interval=0.1):
            raise OrthancError(f"Orthanc holds {count} of {n} instances after {timeout} s; log:\n{self.log()}")
        return count
