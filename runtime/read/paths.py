"""Which paths below the input roots edgeseg may read, and how any name the OS gives is kept as text.

**The symlink rule (the only place it is decided).** A candidate (file or folder) below a root is taken only when
its real path (every symbolic link resolved) is its own path below the real path of that root: nothing below a
root is ever reached through a symbolic link (or a Windows junction), whatever the link points to. A link whose
target leaves the roots would make edgeseg read a slice from elsewhere and write results and error files outside
the roots; a link whose target stays inside would make the same series run twice under two names (``ln -s .
loop``). Links are therefore never followed, read through or written through; each one is logged once by the
:class:`CandidateFilter` that met it. A link in a root's own path (the root itself, or a folder above it) is
fine: roots are resolved first.

Used by :func:`edgeseg.runtime.read.discover_series` (folder walks) and by the watcher's
:class:`~edgeseg.runtime.watch.completion.CompletionTracker` (scan at start, rescans, live events), so that the
same rule holds everywhere, at start and live.

**Names as text.** On Linux a file name is bytes; Python gives a name that is not valid UTF-8 (``café`` written
in Latin-1) as text with lone surrogates, which SQLite, UTF-8 files and terminals refuse. :func:`fs_text` turns
such text into valid Unicode reversibly (:func:`from_fs_text`), and leaves every other text unchanged.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable

from edgeseg.typing import StrPath

log = logging.getLogger(__name__)

#: prefix of the escaped text form of a name that is not valid Unicode (never the start of an absolute path)
FS_ESCAPED = "fs-escaped:"
_UNESCAPE = re.compile(rb"\\(\\|x[0-9a-f]{2})")


def _os_bytes(text: str) -> bytes:
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:  # a lone surrogate that did not come from the OS
        return text.encode("utf-8", "surrogatepass")


def fs_text(text: str) -> str:
    """``text`` unchanged when it is valid Unicode; otherwise ``fs-escaped:`` followed by the name's bytes as
    UTF-8 where they are valid, ``\\xNN`` where they are not, and ``\\\\`` for a backslash. Idempotent, and
    reversed by :func:`from_fs_text`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    return FS_ESCAPED + _os_bytes(text).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def from_fs_text(text: str) -> str:
    """The name :func:`fs_text` escaped (as Python gives OS names: lone surrogates for undecodable bytes)."""
    if not text.startswith(FS_ESCAPED):
        return text
    body = text[len(FS_ESCAPED):].encode("utf-8")
    raw = _UNESCAPE.sub(lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]), body)
    return os.fsdecode(raw)


def printable(text: str) -> str:
    """``text`` for a log line or a terminal: undecodable bytes of a name as ``\\xNN`` (not reversible)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _os_bytes(text).decode("utf-8", "backslashreplace")


def _same(a: str, b: str) -> bool:
    return os.path.normcase(a) == os.path.normcase(b)


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(_same(path, r) or os.path.normcase(path).startswith(os.path.normcase(r.rstrip(os.sep) + os.sep))
               for r in roots)


def _refusal(path: StrPath, roots: Iterable[StrPath]) -> tuple[str, str] | None:
    """None when ``path`` may be read; else (the link or path refused, why)."""
    p = Path(os.path.abspath(path))
    roots = tuple(roots)
    for root in roots:
        root_abs = Path(os.path.abspath(root))
        try:
            rel = p.relative_to(root_abs)
        except ValueError:
            continue
        real_root = os.path.realpath(root_abs)
        if _same(os.path.realpath(p), os.path.join(real_root, *rel.parts)):
            return None
        here, expected = root_abs, real_root
        for part in rel.parts:  # the first component that is not where it seems to be is the link
            here, expected = here / part, os.path.join(expected, part)
            target = os.path.realpath(here)
            if not _same(target, expected):
                where = "inside" if _under(target, [os.path.realpath(r) for r in roots]) else "OUTSIDE"
                return str(here), (f"{here} is a symbolic link (to {target}, {where} the watch roots); links below "
                                   "a root are never followed")
        return str(p), f"{p} resolves to {os.path.realpath(p)}, not to its own path below the root {root_abs}"
    return str(path), f"{path} is not below a watch root"


def outside_reason(path: StrPath, roots: Iterable[StrPath]) -> str | None:
    """None when ``path`` may be read under the symlink rule (see the module docstring); otherwise why not."""
    refused = _refusal(path, roots)
    return None if refused is None else refused[1]


def inside_roots(path: StrPath, roots: Iterable[StrPath]) -> bool:
    """True when ``path`` lies below one of ``roots`` and is reached without any symbolic link below that root
    (its real path is its own path below the root's real path). The one symlink rule; see the module docstring."""
    return _refusal(path, roots) is None


class CandidateFilter:
    """The symlink rule for one walker (the reader's folder walk, the watcher's tracker), logging each refused
    link once, and each folder ignored because it is named like an edgeseg output once."""

    def __init__(self, roots: Iterable[StrPath]) -> None:
        self.roots = tuple(Path(os.path.abspath(r)) for r in roots)
        self._logged: set[str] = set()

    def allows(self, path: StrPath) -> bool:
        """May ``path`` be read (and may results be written beside it)?"""
        refused = _refusal(path, self.roots)
        if refused is None:
            return True
        link, reason = refused
        if link not in self._logged:
            self._logged.add(link)
            log.warning("not taken as input: %s", printable(reason))
        return False

    def output_lookalike(self, folder: StrPath) -> None:
        """Note (once) that ``folder``, named like an edgeseg output (``*.edgeseg``), is not searched for series;
        edgeseg's own result folders (they hold a manifest.json) are ignored silently."""
        key = str(folder)
        if key in self._logged or os.path.isfile(os.path.join(folder, "manifest.json")):
            return
        self._logged.add(key)
        log.warning("folder ignored: %s is named like an edgeseg output (*.edgeseg), so series in it are not "
                    "segmented; rename it to have them segmented", printable(key))
