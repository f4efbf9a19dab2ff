"""The fingerprint of a series' input files: changes when any file is added, removed, rewritten or touched.

Stat-only (no file is opened). The watcher's job store records it per series to run each input exactly once;
results written by tests record it to prove which input they came from.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


@dataclass(frozen=True)
class FileStamp:
    """(name relative to the series folder, size in bytes, mtime in ns) of one input file."""

    rel: str
    size: int
    mtime_ns: int


def stamp_files(folder: Path, files: Iterable[Path]) -> tuple[FileStamp, ...]:
    """Stat every file; files that vanished are left out (the fingerprint then differs, which is the point)."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            continue
        try:
            rel = f.relative_to(folder).as_posix()
        except ValueError:
            rel = f.as_posix()
        out.append(FileStamp(rel, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out, key=lambda s: s.rel))


def fingerprint(stamps: Iterable[FileStamp]) -> str:
    """sha256 over the sorted (relative name, size, mtime_ns) list: changes when any input file is added,
    removed, rewritten or touched."""
    digest = hashlib.sha256()
    for s in sorted(stamps, key=lambda s: s.rel):
        digest.update(f"{s.rel}\0{s.size}\0{s.mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]
