"""The persistent job store: one SQLite row per series key, surviving crashes and restarts.

States::

    discovered -> complete -> running -> done
                                    |-> partial  (segmented, but a requested output could not be written)
                                    \\-> failed   (retried while attempts < max_attempts, or when the input changes)

* A row is keyed by the series key (``<folder>::<SeriesInstanceUID>`` or the image file's path) and carries the
  input *fingerprint* (hash of the sorted (relative name, size, mtime_ns) list) it was last handed out with.
  Any name the OS gives is a valid key: a key, folder or output path that is not valid Unicode (a Latin-1 file
  name on Linux) is stored in the reversible escaped text form of :func:`edgeseg.runtime.read.paths.fs_text`
  (``JobRow`` holds the stored text; :attr:`JobRow.folder_path` and :attr:`JobRow.output_dir` the real paths).
* :meth:`JobStore.reconcile` runs once at start: ``running`` rows were interrupted (crash, kill, forced stop):
  they go back to ``complete`` and run again, unless they were interrupted ``max_attempts`` times already (a
  series that kills the process, e.g. out of memory), which makes them ``failed``.
* :meth:`JobStore.decide` is asked for every complete series: ``done`` and ``partial`` rows are not repeated
  unless the fingerprint changed or the output folder is gone (what made a result partial, a source highdicom
  refuses or one without UIDs, does not change by running it again); ``failed`` rows are retried only if the
  fingerprint changed or attempts < max_attempts.
* Schema version 2 added the ``partial`` state; a version-1 store is migrated in place when the watcher opens it
  (its rows are kept). Version 3 added the ``deliveries`` table (below); older stores get it when opened.
* Version 4 added what the status page and ``edgeseg status`` show of a result (``patient_id``, ``accession``,
  ``model``, ``precision``), the jobs' ``result_removed_at`` / ``input_removed_at`` (a done series whose result the
  retention policy removed is not segmented again while its input is unchanged) — columns added in place to an
  older store —, the ``alerts`` table: the webhook's retry queue (:mod:`edgeseg.runtime.watch.alerts`), one row per
  (event, subject, time), so an alert is queued once and survives restarts, the ``removals`` table (what the
  retention policy removed: SeriesInstanceUID, what, why, counts, times) and the ``skipped`` table: the series the
  selection rules skip (key, SeriesInstanceUID, description, the rule and why, fingerprint, first and last seen),
  which are not jobs: skipped is not failed; and what was actually sent per delivery
  (``sent_sop_instance_uid``, ``sent_kind``: a destination that does not take the label-map SEG gets a BINARY one
  rendered from it), added to an older ``deliveries`` table when opened.
* The outbox (``deliveries``): one row per (destination, SOP Instance UID) of a result to send, inserted in the same
  transaction that records the series ``done``/``partial``, so a result is never done without its deliveries being
  recorded. ``pending`` rows are sent when due (``next_at``) and become ``sent`` once the destination confirmed
  them, or ``failed`` when it refused for good or they reached their maximum age. A kill during a send leaves the
  row ``pending``: it is sent again after the restart, with the same SOP Instance UID, so the PACS keeps one copy.
  A result recorded again (re-segmented, e.g. under other settings) replaces the rows of its earlier objects that
  were not sent yet: the stale file is never sent.

sqlite3 from the standard library, WAL journal, synchronous=FULL (a committed transition survives kill -9 and
power loss); one connection shared by the watcher's threads behind a lock.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgeseg.errors import ConfigError, StateStoreError
from edgeseg.runtime.read.paths import from_fs_text, fs_text, printable

log = logging.getLogger(__name__)

DISCOVERED, COMPLETE, RUNNING, DONE, PARTIAL, FAILED = (
    "discovered", "complete", "running", "done", "partial", "failed")
STATES = (DISCOVERED, COMPLETE, RUNNING, DONE, PARTIAL, FAILED)
#: 1: the first store; 2: the ``partial`` state (a version-1 store is migrated when opened for writing);
#: 3: the ``deliveries`` outbox (created in an older store when opened for writing); 4: the result facts columns
#: (:data:`FACT_COLUMNS`), the removal columns, ``sent_sop_instance_uid``/``sent_kind`` on the deliveries, and the
#: ``alerts``, ``removals`` and ``skipped`` tables (added to an older store when opened for writing)
SCHEMA_VERSION = 4
#: what the status page shows of a series beyond the scheduling columns (schema 4; NULL in older rows)
FACT_COLUMNS = ("patient_id", "accession", "model", "precision")
#: states of a delivery
PENDING, SENT = "pending", "sent"
DELIVERY_STATES = (PENDING, SENT, FAILED)

_TABLE = f"""
CREATE TABLE {{name}} (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    folder TEXT NOT NULL,
    name TEXT NOT NULL,
    series_uid TEXT,
    description TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
    fingerprint TEXT,
    n_files INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    interruptions INTEGER NOT NULL DEFAULT 0,
    error_kind TEXT,
    last_error TEXT,
    output_path TEXT,
    plan TEXT,
    budget_s REAL,
    predicted_s REAL,
    actual_s REAL,
    discovered_at REAL NOT NULL,
    completed_at REAL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL
)"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_updated ON jobs(updated_at);
"""
_DELIVERIES = f"""
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_key TEXT NOT NULL,
    destination TEXT NOT NULL,
    role TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in DELIVERY_STATES)})),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL,
    last_error TEXT,
    updated_at REAL NOT NULL,
    sent_sop_instance_uid TEXT,
    sent_kind TEXT,
    UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_at)
"""
_ALERTS = f"""
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    subject TEXT NOT NULL,
    occurred_at REAL NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in DELIVERY_STATES)})),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL,
    last_error TEXT,
    updated_at REAL NOT NULL,
    UNIQUE (event, subject, occurred_at)
);
CREATE INDEX IF NOT EXISTS alerts_due ON alerts(state, next_at)
"""
_REMOVALS = """
CREATE TABLE IF NOT EXISTS removals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid TEXT,
    what TEXT NOT NULL,
    reason TEXT NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    delivered_at REAL,
    removed_at REAL NOT NULL
)
"""
_SKIPPED = """
CREATE TABLE IF NOT EXISTS skipped (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    folder TEXT NOT NULL,
    series_uid TEXT,
    description TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL,
    fingerprint TEXT,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    input_removed_at REAL
)
"""
#: columns of version 4, added to an older ``jobs`` table (SQLite adds a column in place)
_V4_COLUMNS = tuple((c, "TEXT") for c in FACT_COLUMNS) + (("result_removed_at", "REAL"), ("input_removed_at", "REAL"))
_SCHEMA = (_TABLE.format(name="IF NOT EXISTS jobs") + ";" + _INDEXES + ";" + _DELIVERIES + ";" + _ALERTS + ";"
           + _REMOVALS + ";" + _SKIPPED)


def _add_columns(db: sqlite3.Connection) -> bool:
    """Version 4's columns on a ``jobs`` table that lacks them (inside the caller's transaction); True when one was
    added."""
    have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    missing = [(name, kind) for name, kind in _V4_COLUMNS if name not in have]
    for name, kind in missing:
        db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
    return bool(missing)


_SQLITE_MAGIC = b"SQLite format 3\x00"


def move_aside_command(path: Path, windows: bool | None = None) -> str:
    """The exact shell command that moves a damaged job store (and its -wal/-shm files) aside."""
    windows = sys.platform == "win32" if windows is None else windows
    stamp = time.strftime("%Y%m%dT%H%M%S")
    files = [path] + [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    verb, join = ("move", " & ") if windows else ("mv", " && ")
    return join.join(f'{verb} "{p}" "{p}.damaged-{stamp}"' for p in files)


def store_damaged(path: Path, why: str) -> StateStoreError:
    """The error for a job store that is not a usable SQLite database: what is wrong and the exact fix."""
    return StateStoreError(
        f"Job store {path} is damaged: {why}. The watcher does not start on it: an empty store would silently "
        "segment every series under the roots again. Fix: stop every watcher on this state folder, move the damaged "
        f"store aside with\n    {move_aside_command(path)}\nand start the watcher again; it then starts a new store "
        "and re-checks (and re-segments) every series under the roots. Keep the moved file for a bug report.")


def check_store_file(path: Path) -> None:
    """Refuse an existing store file that is empty (0 bytes) or not an SQLite database (SQLite itself would treat
    an empty file as a new, empty store). A missing file is fine: it is created."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise store_damaged(path, "it is a folder, not a file") from None
    except OSError:
        return  # unreadable: sqlite reports it with its own words
    if not head:
        raise store_damaged(path, "the file is empty (0 bytes)")
    if head != _SQLITE_MAGIC:
        raise store_damaged(path, "the file is not an SQLite database (its first bytes are not 'SQLite format 3')")


def _create_store(path: Path) -> None:
    """Create an empty store (WAL journal, schema) under a hidden name and rename it into place, so that the store
    file is never seen empty: an empty (0-byte) store file always means damage (:func:`check_store_file`)."""
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{threading.get_ident()}")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        _add_columns(db)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    finally:
        db.close()  # the last connection checkpoints and removes the -wal file
    try:
        os.link(tmp, path)  # never replaces a store another process created meanwhile
    except FileExistsError:
        pass
    except OSError:  # no hard links on this file system
        if not path.exists():
            os.replace(tmp, path)
    tmp.unlink(missing_ok=True)


def is_damage(err: sqlite3.Error) -> bool:
    """True for SQLite errors that mean a damaged file (not a database, malformed), not a busy or missing one."""
    name = getattr(err, "sqlite_errorname", "")
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return True
    text = str(err).lower()
    return "not a database" in text or "malformed" in text


@dataclass(frozen=True)
class JobRow:
    """One row of the store (times are epoch seconds)."""

    key: str
    kind: str
    folder: str
    name: str
    series_uid: str | None
    description: str
    state: str
    fingerprint: str | None
    n_files: int
    attempts: int
    interruptions: int
    error_kind: str | None
    last_error: str | None
    output_path: str | None
    plan: str | None
    budget_s: float | None
    predicted_s: float | None
    actual_s: float | None
    discovered_at: float
    completed_at: float | None
    started_at: float | None
    finished_at: float | None
    updated_at: float
    #: schema 4 (None in older rows and stores): the first image's PatientID and AccessionNumber, the bundle (and
    #: variant) and the precision(s) that ran
    patient_id: str | None = None
    accession: str | None = None
    model: str | None = None
    precision: str | None = None
    #: when the retention policy removed the result / the input images (None: not removed; schema version 4)
    result_removed_at: float | None = None
    input_removed_at: float | None = None

    @property
    def plan_dict(self) -> dict[str, Any]:
        return json.loads(self.plan) if self.plan else {}

    @property
    def folder_path(self) -> Path:
        """The series' folder as a path (``folder`` is its stored text form)."""
        return Path(from_fs_text(self.folder))

    @property
    def output_dir(self) -> Path | None:
        """The result folder as a path, or None."""
        return Path(from_fs_text(self.output_path)) if self.output_path else None


@dataclass(frozen=True)
class SkippedRow:
    """A series the selection rules skipped (table ``skipped``; times are epoch seconds): not a job."""

    key: str
    kind: str
    folder: str
    series_uid: str | None
    description: str
    reason: str
    fingerprint: str | None
    first_at: float
    last_at: float
    input_removed_at: float | None = None

    @property
    def folder_path(self) -> Path:
        return Path(from_fs_text(self.folder))

    @property
    def output_dir(self) -> Path | None:
        """A skipped series has no result."""
        return None

    @property
    def result_removed_at(self) -> float | None:
        return None


@dataclass(frozen=True)
class DeliveryRequest:
    """A result file to send to a destination (what :meth:`JobStore.mark_done` records)."""

    destination: str
    role: str
    path: Path
    sop_instance_uid: str


@dataclass(frozen=True)
class DeliveryRow:
    """One row of the outbox (times are epoch seconds)."""

    id: int
    job_key: str
    destination: str
    role: str
    path: str
    sop_instance_uid: str
    state: str
    attempts: int
    next_at: float
    created_at: float
    sent_at: float | None
    last_error: str | None
    updated_at: float
    #: the SOP Instance UID actually sent (a BINARY SEG rendered for a destination, or its SR), when it differs
    sent_sop_instance_uid: str | None = None
    #: what was sent: "labelmap"/"binary" (SEG), "sr"; None before it was sent
    sent_kind: str | None = None

    @property
    def file(self) -> Path:
        return Path(from_fs_text(self.path))


@dataclass(frozen=True)
class AlertRow:
    """One queued webhook alert (``payload``: the JSON text to POST; times are epoch seconds)."""

    id: int
    event: str
    subject: str
    occurred_at: float
    payload: str
    state: str
    attempts: int
    next_at: float
    created_at: float
    sent_at: float | None
    last_error: str | None
    updated_at: float


@dataclass(frozen=True)
class Decision:
    """Whether a complete series should run, and why (for the log)."""

    run: bool
    reason: str


class JobStore:
    """The SQLite job store at ``path`` (created with its folder if missing)."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        check_store_file(self.path)
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                           timeout=10)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if not self.path.exists():
                    _create_store(self.path)
                self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
                self._db.row_factory = sqlite3.Row
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                with self._tx():
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    version = self._db.execute("PRAGMA user_version").fetchone()[0]
                    if version == 1:
                        self._migrate_from_1()
                    if version in (0, 1, 2, 3):  # 2 -> 3: the deliveries table, 3 -> 4: alerts, removals (above)
                        self._migrate_deliveries()
                        if _add_columns(self._db) and version:
                            log.info("job store %s migrated from schema version %d to %d (result facts, removals)",
                                     self.path, version, SCHEMA_VERSION)
                        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    elif version != SCHEMA_VERSION:
                        raise ConfigError(
                            f"Job store {self.path} has schema version {version}; this edgeseg reads version "
                            f"{SCHEMA_VERSION}. Fix: move the state_dir aside (series will be re-checked) or "
                            "use the matching edgeseg version.")
        except sqlite3.Error as err:
            if is_damage(err):
                raise store_damaged(self.path, f"SQLite says: {err}") from err
            raise ConfigError(f"Job store {self.path} cannot be opened ({err}). Fix: check that state_dir is a "
                              "local, writable folder (SQLite does not work reliably on network shares).") from err
        self._db.row_factory = sqlite3.Row

    def _migrate_deliveries(self) -> None:
        """Version 3 -> 4 (inside the open transaction): the columns of what was actually sent."""
        have = {str(r[1]) for r in self._db.execute("PRAGMA table_info(deliveries)").fetchall()}
        for column in ("sent_sop_instance_uid", "sent_kind"):
            if column not in have:
                self._db.execute(f"ALTER TABLE deliveries ADD COLUMN {column} TEXT")

    def _migrate_from_1(self) -> None:
        """Version 1 -> 2 (inside the open transaction): the state CHECK gains ``partial``. SQLite cannot alter a
        CHECK constraint, so the table is copied into a new one, which replaces it; every row is kept."""
        self._db.execute(_TABLE.format(name="jobs_v2"))
        self._db.execute("INSERT INTO jobs_v2 SELECT * FROM jobs")
        self._db.execute("DROP TABLE jobs")
        self._db.execute("ALTER TABLE jobs_v2 RENAME TO jobs")
        for statement in _INDEXES.split(";"):
            if statement.strip():
                self._db.execute(statement)
        log.info("job store %s migrated from schema version 1 to %d (the 'partial' state)", self.path,
                 SCHEMA_VERSION)

    # ------------------------------------------------------------------------------------------------- plumbing

    class _Tx:
        def __init__(self, store: JobStore) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            self.store._db.execute("BEGIN IMMEDIATE")
            return self.store._db

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                self.store._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                self.store._lock.release()

    def _tx(self) -> JobStore._Tx:
        return JobStore._Tx(self)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def get(self, key: str) -> JobRow | None:
        key = fs_text(key)
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return JobRow(**dict(row)) if row else None

    def rows(self, state: str | None = None, limit: int | None = None) -> list[JobRow]:
        """Rows, most recently updated first."""
        sql = "SELECT * FROM jobs" + (" WHERE state = ?" if state else "") + " ORDER BY updated_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            cur = self._db.execute(sql, (state,) if state else ())
            return [JobRow(**dict(r)) for r in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        with self._lock:
            got = dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {s: int(got.get(s, 0)) for s in STATES}

    def __iter__(self) -> Iterator[JobRow]:
        return iter(self.rows())

    # ---------------------------------------------------------------------------------------------- transitions

    def discover(self, key: str, kind: str, folder: Path, name: str, series_uid: str | None = None,
                 description: str = "") -> None:
        """Insert a ``discovered`` row; an existing row (any state) is left as it is."""
        key, description = fs_text(key), printable(description)
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO jobs (key, kind, folder, name, series_uid, description, state, discovered_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, kind, fs_text(str(folder)), name, series_uid, description, DISCOVERED, now, now))

    def decide(self, key: str, fingerprint: str, max_attempts: int) -> Decision:
        """Should the complete series ``key`` with input ``fingerprint`` run now?"""
        row = self.get(key)
        if row is None:
            return Decision(True, "new series")
        if row.state == RUNNING:
            return Decision(False, "already running")
        changed = row.fingerprint != fingerprint
        if row.state in (DONE, PARTIAL):
            if changed:
                return Decision(True, "input changed since it was segmented")
            if row.result_removed_at is not None:
                return Decision(False, "already segmented and delivered; its result was removed by the retention "
                                "policy")
            if row.output_dir is None or not row.output_dir.is_dir():
                return Decision(True, "output folder is missing")
            return Decision(False, "already segmented, input unchanged" + (
                " (partial: see its error file)" if row.state == PARTIAL else ""))
        if row.state == FAILED:
            if changed:
                return Decision(True, "input changed since it failed")
            if row.attempts >= max_attempts or row.interruptions >= max_attempts:
                return Decision(False, f"given up after {max(row.attempts, row.interruptions)} attempts; "
                                "change or re-copy the series to try again")
            return Decision(True, f"retry {row.attempts + 1} of {max_attempts}")
        return Decision(True, "complete, not yet segmented")

    def mark_complete(self, key: str, kind: str, folder: Path, name: str, fingerprint: str, n_files: int,
                      series_uid: str | None = None, description: str = "") -> None:
        """The series is complete with ``fingerprint``; a new fingerprint resets the attempt counters."""
        key, description = fs_text(key), printable(description)
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT fingerprint FROM jobs WHERE key = ?", (key,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO jobs (key, kind, folder, name, series_uid, description, state, fingerprint, n_files,"
                    " discovered_at, completed_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, kind, fs_text(str(folder)), name, series_uid, description, COMPLETE, fingerprint, n_files,
                     now, now, now))
                return
            reset = row["fingerprint"] != fingerprint
            db.execute(
                "UPDATE jobs SET state = ?, fingerprint = ?, n_files = ?, name = ?, completed_at = ?, updated_at = ?"
                + (", attempts = 0, interruptions = 0" if reset else "") + " WHERE key = ?",
                (COMPLETE, fingerprint, n_files, name, now, now, key))

    def mark_running(self, key: str, plan: dict[str, Any] | None = None, budget_s: float | None = None,
                     predicted_s: float | None = None) -> int:
        """Start an attempt; returns the attempt number (1-based)."""
        key = fs_text(key)
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, started_at = ?, finished_at = NULL, plan = ?,"
                " budget_s = ?, predicted_s = ?, actual_s = NULL, updated_at = ? WHERE key = ?",
                (RUNNING, now, json.dumps(plan) if plan else None, budget_s, predicted_s, now, key))
            row = db.execute("SELECT attempts FROM jobs WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def mark_done(self, key: str, output_path: Path | None, actual_s: float,
                  deliveries: Sequence[DeliveryRequest] = ()) -> None:
        """The series is segmented; ``deliveries`` (its result files for each destination) are recorded in the same
        transaction."""
        key = fs_text(key)
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, output_path = ?, actual_s = ?, finished_at = ?, error_kind = NULL,"
                " last_error = NULL, updated_at = ? WHERE key = ?",
                (DONE, fs_text(str(output_path)) if output_path else None, actual_s, now, now, key))
            self._enqueue(db, key, deliveries, now)

    def mark_partial(self, key: str, output_path: Path | None, actual_s: float, message: str,
                     deliveries: Sequence[DeliveryRequest] = ()) -> None:
        """Segmented, but a requested output is missing: ``message`` names each and why (``last_error``); what was
        written is delivered (``deliveries``, recorded in the same transaction)."""
        key, message = fs_text(key), printable(message)
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, output_path = ?, actual_s = ?, finished_at = ?, error_kind = 'partial',"
                " last_error = ?, updated_at = ? WHERE key = ?",
                (PARTIAL, fs_text(str(output_path)) if output_path else None, actual_s, now, message[:4000], now,
                 key))
            self._enqueue(db, key, deliveries, now)

    def set_facts(self, key: str, **facts: str | None) -> None:
        """Record what the status page shows of a series (:data:`FACT_COLUMNS`: ``patient_id``, ``accession``,
        ``model``, ``precision``); None values leave a column as it is."""
        given = {c: printable(v)[:200] for c, v in facts.items() if c in FACT_COLUMNS and v is not None}
        if not given:
            return
        with self._tx() as db:
            db.execute("UPDATE jobs SET " + ", ".join(f"{c} = ?" for c in given) + " WHERE key = ?",
                       (*given.values(), fs_text(key)))

    def given_up_since(self, since: float, max_attempts: int) -> list[JobRow]:
        """``failed`` rows updated after ``since`` that are not retried automatically any more (attempts or
        interruptions at ``max_attempts``), oldest first."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM jobs WHERE state = ? AND updated_at > ? AND (attempts >= ? OR"
                                   " interruptions >= ?) ORDER BY updated_at", (FAILED, since, max_attempts,
                                                                               max_attempts))
            return [JobRow(**dict(r)) for r in cur.fetchall()]

    def deliveries_failed_since(self, since: float) -> list[DeliveryRow]:
        """Deliveries given up (``failed``) after ``since``, oldest first."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM deliveries WHERE state = ? AND updated_at > ? ORDER BY updated_at",
                                   (FAILED, since))
            return [DeliveryRow(**dict(r)) for r in cur.fetchall()]

    # ------------------------------------------------------------------------------------------------- alerts

    def add_alert(self, event: str, subject: str, occurred_at: float, payload: str) -> bool:
        """Queue an alert (due now); the same (event, subject, time) again is ignored. True when queued."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO alerts (event, subject, occurred_at, payload, state, next_at,"
                             " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (event, printable(subject)[:2000], occurred_at, payload, PENDING, now, now, now))
            return bool(cur.rowcount)

    def due_alerts(self, now: float, limit: int = 20) -> list[AlertRow]:
        with self._lock:
            cur = self._db.execute("SELECT * FROM alerts WHERE state = ? AND next_at <= ? ORDER BY next_at, id"
                                   f" LIMIT {int(limit)}", (PENDING, now))
            return [AlertRow(**dict(r)) for r in cur.fetchall()]

    def alert_done(self, alert_id: int, state: str, error: str | None = None, next_at: float | None = None) -> None:
        """An attempt at ``alert_id`` ended: ``sent``, ``failed`` (given up) or ``pending`` again at ``next_at``."""
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE alerts SET state = ?, attempts = attempts + 1, last_error = ?, updated_at = ?,"
                       " sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END, next_at = COALESCE(?, next_at)"
                       " WHERE id = ?", (state, None if error is None else printable(error)[:2000], now, state, now,
                                         next_at, alert_id))

    def alerts(self, limit: int = 20) -> list[AlertRow]:
        """Alerts, most recently updated first (none from a store older than schema version 4)."""
        with self._lock:
            try:
                cur = self._db.execute(f"SELECT * FROM alerts ORDER BY updated_at DESC LIMIT {int(limit)}")
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):
                    return []
                raise
            return [AlertRow(**dict(r)) for r in cur.fetchall()]

    # ------------------------------------------------------------------------------------------------- outbox

    @staticmethod
    def _enqueue(db: sqlite3.Connection, key: str, deliveries: Sequence[DeliveryRequest], now: float) -> None:
        """Record each delivery as ``pending`` (due now). The same object (SOP Instance UID) for the same
        destination again: a ``sent`` row stays sent (the destination has it), another row is due again. Rows of the
        same series, destination and role for another object (a result made again under other settings) that were
        not sent are removed: the file they name is gone or replaced."""
        for d in deliveries:
            db.execute("DELETE FROM deliveries WHERE job_key = ? AND destination = ? AND role = ?"
                       " AND sop_instance_uid != ? AND state != ?",
                       (key, d.destination, d.role, d.sop_instance_uid, SENT))
            db.execute(
                "INSERT INTO deliveries (job_key, destination, role, path, sop_instance_uid, state, next_at,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET job_key = excluded.job_key,"
                " path = excluded.path, role = excluded.role, updated_at = excluded.updated_at,"
                " state = CASE WHEN state = 'sent' THEN 'sent' ELSE 'pending' END,"
                " next_at = CASE WHEN state = 'sent' THEN next_at ELSE excluded.next_at END,"
                " created_at = CASE WHEN state = 'sent' THEN created_at ELSE excluded.created_at END",
                (key, d.destination, d.role, fs_text(str(d.path)), d.sop_instance_uid, PENDING, now, now, now))

    def due_deliveries(self, now: float, limit: int = 100) -> list[DeliveryRow]:
        """Pending deliveries due at ``now``, oldest first."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM deliveries WHERE state = ? AND next_at <= ? ORDER BY next_at, id"
                                   f" LIMIT {int(limit)}", (PENDING, now))
            return [DeliveryRow(**dict(r)) for r in cur.fetchall()]

    def next_delivery_at(self) -> float | None:
        """When the next pending delivery is due (None: nothing pending)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(next_at) FROM deliveries WHERE state = ?", (PENDING,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def delivery_sent(self, delivery_id: int, sent_uid: str | None = None, sent_kind: str | None = None) -> None:
        """The destination confirmed the object; ``sent_uid``/``sent_kind``: what was actually sent."""
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state = ?, attempts = attempts + 1, sent_at = ?, last_error = NULL,"
                       " updated_at = ?, sent_sop_instance_uid = ?, sent_kind = ? WHERE id = ?",
                       (SENT, now, now, sent_uid, sent_kind, delivery_id))

    def delivery_defer(self, delivery_id: int, next_at: float, why: str) -> None:
        """Not tried now (its SEG is not accepted yet): due at ``next_at``, no attempt counted."""
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE deliveries SET next_at = ?, last_error = ?, updated_at = ? WHERE id = ? AND state = ?",
                       (next_at, printable(why)[:2000], now, delivery_id, PENDING))

    def make_due(self, destination: str | None = None) -> int:
        """Pending deliveries (of ``destination``, or all) become due now (``deliver --now``, a destination that
        answers C-ECHO again); returns how many."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute("UPDATE deliveries SET next_at = ?, updated_at = ? WHERE state = ? AND next_at > ?"
                             + (" AND destination = ?" if destination else ""),
                             (now, now, PENDING, now, *((destination,) if destination else ())))
            return int(cur.rowcount or 0)

    def backed_off_destinations(self, now: float) -> set[str]:
        """Destinations with pending deliveries that failed before and wait for a later try."""
        with self._lock:
            cur = self._db.execute("SELECT DISTINCT destination FROM deliveries WHERE state = ? AND next_at > ?"
                                   " AND attempts > 0", (PENDING, now))
            return {str(r[0]) for r in cur.fetchall()}

    def open_delivery_keys(self) -> dict[str, str]:
        """Series key -> "pending" or "failed": the series whose result some destination does not have yet."""
        with self._lock:
            try:
                cur = self._db.execute("SELECT job_key, MIN(state) FROM deliveries WHERE state != ? GROUP BY job_key",
                                       (SENT,))
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):
                    return {}
                raise
            return {str(k): str(s) for k, s in cur.fetchall()}

    def delivery_retry(self, delivery_id: int, next_at: float, error: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE deliveries SET attempts = attempts + 1, next_at = ?, last_error = ?, updated_at = ?"
                       " WHERE id = ? AND state = ?", (next_at, printable(error)[:2000], now, delivery_id, PENDING))

    def delivery_failed(self, delivery_id: int, error: str, count_attempt: bool = True) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state = ?, attempts = attempts + ?, last_error = ?, updated_at = ?"
                       " WHERE id = ?", (FAILED, 1 if count_attempt else 0, printable(error)[:2000], now,
                                         delivery_id))

    def retry_failed_deliveries(self, destination: str | None = None) -> int:
        """``failed`` deliveries (of ``destination``, or all) become ``pending`` and due now, with a new maximum-age
        window; returns how many."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute("UPDATE deliveries SET state = ?, next_at = ?, created_at = ?, updated_at = ?"
                             " WHERE state = ?" + (" AND destination = ?" if destination else ""),
                             (PENDING, now, now, now, FAILED, *((destination,) if destination else ())))
            return int(cur.rowcount or 0)

    def deliveries(self, state: str | None = None, limit: int | None = None) -> list[DeliveryRow]:
        """Deliveries, most recently updated first (none from a store older than schema version 3)."""
        sql = "SELECT * FROM deliveries" + (" WHERE state = ?" if state else "") + " ORDER BY updated_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            try:
                cur = self._db.execute(sql, (state,) if state else ())
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):
                    return []
                raise
            return [DeliveryRow(**dict(r)) for r in cur.fetchall()]

    def replace_objects(self, seg: DeliveryRow, seg_path: Path, seg_uid: str, sr_path: Path | None,
                        sr_uid: str | None) -> DeliveryRow | None:
        """The result of ``seg`` (a SEG row not sent yet) is to go as another object (its SEG rendered anew under
        the settings of now): the row names ``seg_path``/``seg_uid`` instead, and the SR row of the same result and
        destination that was not sent names ``sr_path``/``sr_uid`` (the SR of exactly that SEG), in one
        transaction. Another unsent row for the same object and destination goes; when the destination already has
        that object (a sent row), the stale row goes and None is returned. Returns the row as it is now."""
        now = time.time()
        with self._tx() as db:
            for role, row_id, path, uid in (("seg", seg.id, seg_path, seg_uid), ("sr", None, sr_path, sr_uid)):
                if path is None or uid is None:
                    continue
                if row_id is None:
                    found = db.execute("SELECT id FROM deliveries WHERE job_key = ? AND destination = ? AND role = ?"
                                       " AND state != ?", (seg.job_key, seg.destination, role, SENT)).fetchone()
                    if found is None:
                        continue
                    row_id = int(found[0])
                db.execute("DELETE FROM deliveries WHERE destination = ? AND sop_instance_uid = ? AND id != ? AND"
                           " state != ?", (seg.destination, uid, row_id, SENT))
                if db.execute("SELECT 1 FROM deliveries WHERE destination = ? AND sop_instance_uid = ? AND id != ?",
                              (seg.destination, uid, row_id)).fetchone() is not None:
                    db.execute("DELETE FROM deliveries WHERE id = ?", (row_id,))  # the destination has it
                    continue
                db.execute("UPDATE deliveries SET path = ?, sop_instance_uid = ?, updated_at = ? WHERE id = ?",
                           (fs_text(str(path)), uid, now, row_id))
            row = db.execute("SELECT * FROM deliveries WHERE id = ?", (seg.id,)).fetchone()
        return None if row is None else DeliveryRow(**dict(row))

    def delivery_history(self, destination: str) -> tuple[DeliveryRow | None, DeliveryRow | None]:
        """(the delivery to ``destination`` tried most recently, the one sent most recently): what ``doctor`` knows
        of whether the destination takes our C-STOREs (None: there is none; none from a store before schema 3)."""
        with self._lock:
            try:
                tried = self._db.execute("SELECT * FROM deliveries WHERE destination = ? AND (attempts > 0 OR state"
                                         " != ?) ORDER BY updated_at DESC, id DESC LIMIT 1",
                                         (destination, PENDING)).fetchone()
                sent = self._db.execute("SELECT * FROM deliveries WHERE destination = ? AND state = ? ORDER BY"
                                        " sent_at DESC, id DESC LIMIT 1", (destination, SENT)).fetchone()
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):
                    return None, None
                raise
        return (None if tried is None else DeliveryRow(**dict(tried)),
                None if sent is None else DeliveryRow(**dict(sent)))

    def deliveries_of(self, key: str) -> list[DeliveryRow]:
        """The deliveries of the series ``key``'s result."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM deliveries WHERE job_key = ? ORDER BY id", (fs_text(key),))
            return [DeliveryRow(**dict(r)) for r in cur.fetchall()]

    def mark_undelivered(self, key: str, message: str) -> None:
        """A result the destinations did not all take is not a success: a ``done`` series becomes ``partial`` with
        error kind ``delivery`` and ``message``; a series already partial for another reason keeps its kind and gets
        ``message`` added."""
        key, message = fs_text(key), printable(message)
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT state, error_kind, last_error FROM jobs WHERE key = ?", (key,)).fetchone()
            if row is None or row["state"] not in (DONE, PARTIAL):
                return
            if row["state"] == DONE or row["error_kind"] == "delivery":
                kind, text = "delivery", message
            else:
                kind, text = row["error_kind"], f"{row['last_error'] or ''} Also: {message}".strip()
            db.execute("UPDATE jobs SET state = ?, error_kind = ?, last_error = ?, updated_at = ? WHERE key = ?",
                       (PARTIAL, kind, text[:4000], now, key))

    def mark_delivered(self, key: str) -> bool:
        """Every delivery of ``key`` was taken after all (``deliver --retry``): a series that was partial only for
        its deliveries is ``done`` again. True when it changed."""
        key = fs_text(key)
        now = time.time()
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET state = ?, error_kind = NULL, last_error = NULL, updated_at = ?"
                             " WHERE key = ? AND state = ? AND error_kind = 'delivery'", (DONE, now, key, PARTIAL))
            return bool(cur.rowcount)

    def delivery_counts(self) -> dict[str, int]:
        with self._lock:
            try:
                got = dict(self._db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall())
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):
                    got = {}
                else:
                    raise
        return {s: int(got.get(s, 0)) for s in DELIVERY_STATES}

    def delivery_counts_by_destination(self) -> dict[str, dict[str, int]]:
        """Destination -> state -> deliveries (every state present; {} from a store before schema 3)."""
        with self._lock:
            try:
                got = self._db.execute("SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination,"
                                       " state").fetchall()
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):
                    return {}
                raise
        out: dict[str, dict[str, int]] = {}
        for destination, state, n in got:
            out.setdefault(str(destination), {s: 0 for s in DELIVERY_STATES})[str(state)] = int(n)
        return out

    def mark_failed(self, key: str, error_kind: str, message: str, actual_s: float | None = None,
                    give_up: bool = False, max_attempts: int | None = None) -> None:
        """Record a failed attempt; ``give_up`` (a deterministic problem) sets attempts to ``max_attempts``."""
        key, message = fs_text(key), printable(message)
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, error_kind = ?, last_error = ?, actual_s = ?, finished_at = ?,"
                " updated_at = ?" + (", attempts = MAX(attempts, ?)" if give_up and max_attempts else "")
                + " WHERE key = ?",
                (FAILED, error_kind, message[:4000], actual_s, now, now,
                 *((max_attempts,) if give_up and max_attempts else ()), key))

    def mark_cancelled(self, key: str) -> None:
        """A stop request cancelled the attempt cleanly: back to ``complete``, the attempt not counted."""
        key = fs_text(key)
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = ?, attempts = MAX(attempts - 1, 0), started_at = NULL,"
                       " updated_at = ? WHERE key = ? AND state = ?", (COMPLETE, now, key, RUNNING))

    # ------------------------------------------------------------------------------------------------ retention

    def record_removal(self, key: str, series_uid: str | None, what: str, reason: str, files: int, size: int,
                       delivered_at: float | None) -> None:
        """The retention policy removed ``what`` ("result" or "input") of the series ``key`` for ``reason`` ("age"
        or "watermark"): a ``removals`` row (the SeriesInstanceUID, counts and times: no names or paths) and the
        job row's ``result_removed_at`` / ``input_removed_at``, in one transaction."""
        now = time.time()
        column = "result_removed_at" if what == "result" else "input_removed_at"
        with self._tx() as db:
            db.execute("INSERT INTO removals (series_uid, what, reason, files, bytes, delivered_at, removed_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)", (series_uid, what, reason, files, size, delivered_at, now))
            db.execute(f"UPDATE jobs SET {column} = ?, updated_at = ? WHERE key = ?", (now, now, fs_text(key)))
            if what != "result":
                db.execute("UPDATE skipped SET input_removed_at = ? WHERE key = ?", (now, fs_text(key)))

    def removals(self) -> list[dict[str, Any]]:
        """What the retention policy removed, oldest first (none from a store older than version 4)."""
        with self._lock:
            try:
                cur = self._db.execute("SELECT * FROM removals ORDER BY id")
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):
                    return []
                raise
            return [dict(r) for r in cur.fetchall()]

    def mark_skipped(self, key: str, kind: str, folder: Path, series_uid: str | None, description: str, reason: str,
                     fingerprint: str | None) -> bool:
        """A selection rule skipped the series ``key`` (``reason``: the rule and why): its job row goes, a
        ``skipped`` row records it. True when it is new or its input or reason changed (the caller logs it then:
        once, not at every restart)."""
        key, description, reason = fs_text(key), printable(description), printable(reason)[:2000]
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE key = ?", (key,))
            row = db.execute("SELECT reason, fingerprint FROM skipped WHERE key = ?", (key,)).fetchone()
            changed = row is None or row["reason"] != reason or row["fingerprint"] != fingerprint
            db.execute(
                "INSERT INTO skipped (key, kind, folder, series_uid, description, reason, fingerprint, first_at,"
                " last_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET reason = excluded.reason,"
                " fingerprint = excluded.fingerprint, description = excluded.description, last_at = excluded.last_at"
                + (", first_at = excluded.first_at, input_removed_at = NULL" if changed else ""),
                (key, kind, fs_text(str(folder)), series_uid, description, reason, fingerprint, now, now))
        return changed

    def skipped(self, limit: int | None = None) -> list[SkippedRow]:
        """The series the selection rules skipped, most recently seen first (none before schema version 4)."""
        sql = "SELECT * FROM skipped ORDER BY last_at DESC" + (f" LIMIT {int(limit)}" if limit else "")
        with self._lock:
            try:
                return [SkippedRow(**dict(r)) for r in self._db.execute(sql).fetchall()]
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):
                    return []
                raise

    def forget_discovered(self, key: str) -> None:
        """Remove the row of ``key`` if it is still only ``discovered``: a series first seen as one, then handed out
        as one job per 3-D stack (echoes), each with a row of its own."""
        key = fs_text(key)
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE key = ? AND state = ?", (key, DISCOVERED))

    def forget(self, key: str) -> None:
        """Remove a row (a series with nothing to do, e.g. localizer images only)."""
        key = fs_text(key)
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE key = ?", (key,))

    def reconcile(self, max_attempts: int) -> list[JobRow]:
        """At start: interrupted (``running``) rows go back to ``complete``, or to ``failed`` once they were
        interrupted ``max_attempts`` times. Returns the rows that were given up (the caller writes error files)."""
        now = time.time()
        given_up: list[JobRow] = []
        with self._tx() as db:
            rows = [JobRow(**dict(r)) for r in db.execute("SELECT * FROM jobs WHERE state = ?", (RUNNING,))]
            for row in rows:
                interruptions = row.interruptions + 1
                if interruptions >= max_attempts:
                    msg = (f"the watcher stopped {interruptions} times while segmenting this series (crash, "
                           "out-of-memory kill or forced stop), so it is not retried automatically")
                    db.execute("UPDATE jobs SET state = ?, interruptions = ?, error_kind = 'interrupted',"
                               " last_error = ?, finished_at = ?, updated_at = ? WHERE key = ?",
                               (FAILED, interruptions, msg, now, now, row.key))
                    given_up.append(self._row(db, row.key))
                    log.error("series given up after repeated interruptions: key=%s interruptions=%d", row.key,
                              interruptions)
                else:
                    db.execute("UPDATE jobs SET state = ?, interruptions = ?, attempts = MAX(attempts - 1, 0),"
                               " updated_at = ? WHERE key = ?", (COMPLETE, interruptions, now, row.key))
                    log.info("series was interrupted, it will run again: key=%s interruptions=%d", row.key,
                             interruptions)
        return given_up

    @staticmethod
    def _row(db: sqlite3.Connection, key: str) -> JobRow:
        return JobRow(**dict(db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()))
