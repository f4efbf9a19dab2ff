"""One watcher per state folder: an exclusive lock on ``<state_dir>/watcher.lock``, held while the watcher runs.

The lock file is held open with ``fcntl.flock`` (POSIX) or ``msvcrt.locking`` (Windows) and holds the pid of its
owner. The operating system drops the lock when the process ends in any way (``kill -9``, crash, power loss
included), so a stale file never blocks a new start and ``edgeseg status`` can tell a live watcher from a dead one
by probing the lock instead of trusting the heartbeat's age.

On Windows the locked byte lies far beyond the pid text (``_WIN_LOCK_OFFSET``): a locked range cannot be read by
other processes, and the pid must stay readable.
"""
from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path

from edgeseg.errors import WatcherRunningError

LOCK_NAME = "watcher.lock"
_WIN_LOCK_OFFSET = 1 << 30

if sys.platform == "win32":  # pragma: no cover - exercised on Windows builds
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def lock_path(state_dir: Path) -> Path:
    return Path(state_dir) / LOCK_NAME


def recorded_pid(state_dir: Path) -> int | None:
    """The pid written into the lock file by its last owner (None: no file or no pid)."""
    try:
        text = lock_path(state_dir).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    head = text.split()[0] if text else ""
    return int(head) if head.isdigit() else None


def lock_is_held(state_dir: Path) -> bool | None:
    """True while a live process holds the lock, False when nobody does, None when there is no lock file.

    Probes by taking the lock for an instant (a watcher starting in that instant retries, see
    :meth:`StateLock.acquire`)."""
    path = lock_path(state_dir)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        if _try_lock(fd):
            _unlock(fd)
            return False
        return True
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Best effort: does a process with this pid exist (it may be an unrelated process that reused the pid)?"""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # pragma: no cover
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StateLock:
    """The exclusive lock of one state folder. :meth:`acquire` raises :class:`WatcherRunningError` when another
    process (or another watcher object in this process) holds it; :meth:`release` is idempotent."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = lock_path(self.state_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float = 1.0) -> None:
        """Take the lock, retrying for ``wait_s`` (a concurrent ``edgeseg status`` probes it for an instant), and
        write this process's pid into the file."""
        if self._fd is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        try:
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    pid = recorded_pid(self.state_dir)
                    who = f"pid {pid}" if pid is not None else "pid unknown"
                    raise WatcherRunningError(
                        f"Another watcher ({who}) uses this state folder {self.state_dir}. Two watchers on one state "
                        "folder would segment every series twice and take each other's running series for "
                        "crashes. Fix: stop the other watcher first (`edgeseg status` shows it), or give this one "
                        "its own state_dir in watch_config.yaml (and its own roots).")
                time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            _unlock(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
