"""The watcher's state folder as ``edgeseg status``, ``deliver`` and ``doctor`` show it: the heartbeat file, whether
the watcher lives (lock, then heartbeat), the job store opened for a command, and the text helpers (ages, tables,
delivery rows) they print with. The one place these commands share code; none of them imports another command."""
from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def age(seconds: float) -> str:
    """``seconds`` as a short age: "12 s", "7 min", "3.5 h", "4 d"."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: left-aligned columns as wide as their widest cell, a dashed rule under the headers."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def read_beat(state_dir: Path) -> dict[str, Any]:
    """The watcher's heartbeat file (``<state_dir>/watcher.json``), or {} when there is none or it is unreadable."""
    path = state_dir / "watcher.json"
    if not path.is_file():
        return {}
    try:
        beat = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return beat if isinstance(beat, dict) else {}


def liveness(state_dir: Path, beat: dict[str, Any], now: float) -> str:
    """The watcher's state from the state folder's lock (held only by a live process: a ``kill -9`` frees it at
    once), then the heartbeat file; the pid is checked when there is no lock file (a watcher before the lock)."""
    from edgeseg.runtime.watch.lock import lock_is_held, pid_alive, recorded_pid

    held = lock_is_held(state_dir)
    pid = recorded_pid(state_dir) if held else beat.get("pid")
    if held is None and beat and not beat.get("stopped") and isinstance(beat.get("pid"), int):
        held = pid_alive(int(beat["pid"]))
    last = f"last heartbeat {age(now - beat['heartbeat_at'])} ago" if beat.get("heartbeat_at") else "no heartbeat"
    if held:
        if beat and now - beat.get("heartbeat_at", 0) <= 30 and not beat.get("stopped"):
            return f"running (pid {pid}, up {age(now - beat.get('started_at', now))})"
        return f"NOT RESPONDING (pid {pid} holds the state folder, {last})"
    if not beat:
        return "not running (no heartbeat file)"
    if beat.get("stopped"):
        return f"stopped {age(now - beat.get('heartbeat_at', now))} ago"
    return (f"NOT RUNNING: pid {beat.get('pid')} ended without stopping cleanly (killed or crashed; {last}); "
            "start it again, interrupted series then run again")


def state_config(args: argparse.Namespace) -> Any:
    """The configuration for commands that only read the state folder (``--config``, ``--state-dir``; paths are
    not checked)."""
    from edgeseg.runtime.watch.config import load_config

    return load_config(args.config, {"state_dir": getattr(args, "state_dir", None)}, check_paths=False)


def with_store(path: Path, query: Callable[[Any], T], readonly: bool) -> T | int:
    """``query(store)`` on the job store at ``path``; on failure prints why (a damaged store: the command that moves
    it aside) and returns the exit code instead."""
    from edgeseg.errors import EdgesegError, StateStoreError, exit_code_of
    from edgeseg.runtime.watch.store import JobStore, is_damage, store_damaged

    try:
        with JobStore(path, readonly=readonly) as store:
            try:
                return query(store)
            except sqlite3.DatabaseError as err:
                if not is_damage(err):
                    raise
                raise store_damaged(path, f"SQLite says: {err}") from err
    except StateStoreError as err:
        print(str(err))
        return err.exit_code
    except (EdgesegError, sqlite3.Error) as err:
        print(f"Job store {path} cannot be read: {err}")
        return exit_code_of(err)


#: the columns of a deliveries table (:func:`delivery_cells` gives its rows)
DELIVERY_HEADERS = ["DESTINATION", "ROLE", "STATE", "TRIES", "NEXT TRY / LAST ERROR", "SERIES KEY"]


def delivery_cells(d: Any, now: float) -> list[str]:
    """One row of the deliveries table: destination, role, state, tries, next try (pending) or last error, key."""
    error = (d.last_error or "").replace("\n", " ")
    if d.state == "pending":
        when = "due now" if d.next_at <= now else f"in {age(d.next_at - now)}"
        detail = when + (f"; last: {error}" if error else "")
    else:
        detail = error or "-"
    detail = detail[:100] + ("..." if len(detail) > 100 else "")
    return [d.destination, d.role, d.state, str(d.attempts), detail, d.job_key]

