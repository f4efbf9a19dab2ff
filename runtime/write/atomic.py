"""Atomic publication of results beside a series, the error file, and the names we write.

Layout beside a series (``<name>`` is :attr:`Volume.name`)::

    <series folder>/
        <name>.edgeseg/                       finished results (published by one rename)
        <name>.edgeseg-error.json             why the last attempt failed (replaced atomically)
        .<name>.edgeseg.partial-<random>/     results being written (removed on failure)
        .<name>.edgeseg.old-<random>/         a previous result being replaced (deleted after the swap)
        .<name>.edgeseg-error.json.partial-<random>   error file being written

A reader therefore sees either the previous complete ``<name>.edgeseg`` folder or the new complete one, never a
half-written folder under the final name. :func:`~edgeseg.runtime.naming.is_edgeseg_output` recognises every one of
these names (:mod:`edgeseg.runtime.naming` holds them all) so that the watcher and
:func:`edgeseg.runtime.read.discover_series` ignore them. Input files are never touched: every
path created or removed here carries one of these names.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Callable, TypeVar

from edgeseg import __version__
from edgeseg.errors import EdgesegError, OutputError, kind_of
from edgeseg.runtime.naming import OLD_MARK as _OLD
from edgeseg.runtime.naming import PARTIAL_MARK as _PARTIAL
from edgeseg.runtime.naming import disambiguated, error_file_name, result_dir_name
from edgeseg.runtime.read.paths import fs_text
from edgeseg.typing import StrPath

T = TypeVar("T")

log = logging.getLogger(__name__)


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name in (".", "..") or ".." in name or "\x00" in name:
        raise ValueError(f"output name {name!r} is not a safe file-name stem (no path separators or '..')")


def output_error(err: OSError, where: Path, action: str) -> OutputError:
    """Turn an OSError while writing into an :class:`OutputError` whose message says what to do."""
    code = err.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = f"the disk holding {where} is full: free some space there (or choose another output folder) and run again"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = (f"edgeseg may not write in {where}: give the user running edgeseg write permission there "
               "(or choose another output folder) and run again")
    else:
        fix = f"check that {where} exists and is writable, then run again"
    return OutputError(f"Could not {action} ({err.strerror or err}): {fix}.")


def _random() -> str:
    return secrets.token_hex(4)


class ResultFolder:
    """Build results in a hidden temporary sibling and publish them as ``<parent>/<name>.edgeseg`` by rename.

    Use as a context manager; the body writes into :attr:`path` (the partial folder)::

        with ResultFolder(series_dir, volume.name) as folder:
            write_labelmap(folder.path / "seg.nii.gz", ...)
        folder.final_path  # now exists and holds the new results

    On success an existing ``<name>.edgeseg`` is first renamed aside to ``.<name>.edgeseg.old-<random>``, the new
    folder renamed in, then the old one deleted (restored if the swap fails). On an exception the partial folder
    is removed and nothing under the final name changes; an OSError is re-raised as :class:`OutputError`.

    ``owner``: the series key of the results (the body records it as ``series_key`` in ``manifest.json``). A
    result under the final name whose manifest names another series is never replaced: the results are then
    published as ``<name>_<tag>.edgeseg`` (:func:`edgeseg.runtime.naming.disambiguated`) and a warning
    logged; :attr:`final_path` tells where they went.
    """

    def __init__(self, parent: StrPath, name: str, owner: str | None = None) -> None:
        _check_name(name)
        self.parent = Path(parent)
        self.name = name
        self.owner = owner
        self.final_path = self.parent / result_dir_name(name)
        self.path = self.parent / f".{name}{_PARTIAL}{_random()}"
        self.published = False

    def __enter__(self) -> ResultFolder:
        try:
            self.path.mkdir(parents=False, exist_ok=False)
        except OSError as err:
            raise output_error(err, self.parent, f"create the result folder {self.path}") from err
        log.debug("building results in %s", self.path)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.publish()
            return
        log.debug("writing results for %s failed (%s); removing %s", self.name, exc_type, self.path)
        shutil.rmtree(self.path, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, EdgesegError):
            raise output_error(exc, self.parent, f"write the results for {self.name}") from exc

    def publish(self) -> Path:
        """Move the partial folder to the final name (replacing an older result); returns the final path."""
        if self.published:
            return self.final_path
        old: Path | None = None
        self._avoid_collision()
        try:
            if self.final_path.exists():
                old = self.parent / f".{self.name}{_OLD}{_random()}"
                os.rename(self.final_path, old)
            try:
                os.rename(self.path, self.final_path)
            except OSError:
                if old is not None:  # put the previous result back under its name
                    os.rename(old, self.final_path)
                    old = None
                raise
        except OSError as err:
            shutil.rmtree(self.path, ignore_errors=True)
            raise output_error(err, self.parent, f"publish the results as {self.final_path}") from err
        self.published = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            if old.exists():
                log.warning("could not delete the replaced result %s; it is safe to delete by hand", old)
        log.info("results published in %s", self.final_path)
        return self.final_path


    def _avoid_collision(self) -> None:
        if self.owner is None:
            return
        for attempt in range(2):
            holder = result_owner(self.final_path)
            if holder is None or _owner_text(holder) == _owner_text(self.owner):
                return
            if attempt:
                shutil.rmtree(self.path, ignore_errors=True)
                raise OutputError(f"Could not publish the results of {self.owner}: {self.final_path} holds the "
                                  f"results of another series ({holder}). Rename one of the series and run again.")
            alternative = self.parent / result_dir_name(disambiguated(self.name, _owner_text(self.owner)))
            log.warning("output name collision: %s holds the results of another series (%s); the results of %s go "
                        "to %s instead", self.final_path, holder, self.owner, alternative.name)
            self.final_path = alternative


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _owner_text(owner: str) -> str:
    return fs_text(owner)


def result_owner(folder: StrPath) -> str | None:
    """The series key recorded in ``<folder>/manifest.json`` (``series_key``), or None (no folder, no manifest,
    or a result written before edgeseg recorded it)."""
    try:
        with open(Path(folder) / "manifest.json", encoding="utf-8") as fh:
            key = json.load(fh).get("series_key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) and key else None


def write_json_atomic(path: StrPath, payload: Any, *, indent: int | None = 2, sort_keys: bool = False,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``payload`` as JSON to ``path``: a reader sees the previous file or the new one, never a part of it.

    The text goes to a hidden temporary in the same folder (``.<file name>.partial-<random>``, created exclusively),
    is flushed and fsync'ed, then renamed over ``path`` (``os.replace``: atomic on POSIX and Windows). On any
    failure (writing, renaming, an interrupt) the temporary is removed and the error re-raised, an ``OSError`` for
    the file system (the caller decides what it means: :func:`write_error_file` raises :class:`OutputError`); a
    payload that is not JSON raises before any file is created. UTF-8 with non-ASCII characters kept, unless a
    string is not valid Unicode (an undecodable byte of a file name on Linux): then JSON's ``\\u`` escapes
    throughout. Ends with a newline. Returns ``path``.
    """
    path = Path(path)
    text = json.dumps(payload, indent=indent, sort_keys=sort_keys, default=default, ensure_ascii=False)
    if not _is_utf8(text):
        text = json.dumps(payload, indent=indent, sort_keys=sort_keys, default=default)
    data = (text + "\n").encode("utf-8")
    return write_file_atomic(path, lambda fh: fh.write(data))


def write_file_atomic(path: StrPath, fill: Callable[[BinaryIO], Any], *, tmp_infix: str = ".partial-") -> Path:
    """Write a file whose bytes ``fill(fh)`` writes: a reader sees the previous file or the new one, never a part.

    The bytes go to a hidden temporary in the same folder (``.<file name><tmp_infix><random>``, created
    exclusively), are flushed and fsync'ed, then renamed over ``path`` (``os.replace``). On any failure the
    temporary is removed and the error re-raised. The caller fsyncs the folder where the rename itself must survive
    a power loss. Returns ``path``.
    """
    def write(tmp: Path) -> None:
        with open(tmp, "xb") as fh:
            fill(fh)

    write_path_atomic(path, write, tmp_infix=tmp_infix)
    return Path(path)


def write_path_atomic(path: StrPath, write: Callable[[Path], T], *, tmp_infix: str = ".partial-") -> T:
    """:func:`write_file_atomic` for writers that take a path (pydicom's ``save_as``): ``write(tmp)`` writes the
    hidden temporary beside ``path``, which is then fsync'ed and renamed over ``path``; on any failure the temporary
    is removed and the error re-raised. Returns what ``write`` returned."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{tmp_infix}{_random()}")
    try:
        result = write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return result


def write_error_file(series_dir: StrPath, name: str, error: BaseException | str, what_to_do: str) -> Path:
    """Write ``<series_dir>/<name>.edgeseg-error.json`` atomically (:func:`write_json_atomic`).

    The JSON holds ``series`` (the name), ``kind`` (the error class's ``kind``, e.g. "invalid_series"; "internal"
    for an error outside edgeseg's family, a bug; "error" for a message given as text),
    ``error`` (the message), ``what_to_do``, ``edgeseg_version`` and ``time_utc`` (ISO 8601).
    Returns the path. Raises :class:`OutputError` if the folder is not writable or the disk is full.
    """
    _check_name(name)
    path = Path(series_dir) / error_file_name(name)
    payload = {
        "series": name,
        "kind": kind_of(error) if isinstance(error, BaseException) else EdgesegError.kind,
        "error": str(error),
        "what_to_do": what_to_do,
        "edgeseg_version": __version__,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        write_json_atomic(path, payload)
    except OSError as err:
        raise output_error(err, path.parent, f"write {path}") from err
    log.info("wrote error file %s", path)
    return path


def clear_error_file(series_dir: StrPath, name: str) -> bool:
    """Remove ``<series_dir>/<name>.edgeseg-error.json`` if present; True if one was removed."""
    _check_name(name)
    path = Path(series_dir) / error_file_name(name)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as err:
        raise output_error(err, path.parent, f"remove the old error file {path}") from err
    log.debug("removed error file %s", path)
    return True
