"""sha256 of bundle files, and the check the runtime runs before it trusts a bundle."""
from __future__ import annotations

import hashlib
from pathlib import Path

from edgeseg.errors import BundleError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of one file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root: Path, exclude: tuple[str, ...] = ("bundle.json",)) -> dict[str, str]:
    """sha256 of every regular file below ``root`` (POSIX relative paths), except ``exclude``."""
    out: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude:
            continue
        out[rel] = sha256_file(path)
    return out


def verify_files(root: Path, recorded: dict[str, str]) -> None:
    """Raise :class:`BundleError` unless every recorded file exists below ``root`` with its recorded sha256."""
    problems: list[str] = []
    for rel, expected in sorted(recorded.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != expected:
            problems.append(f"{rel}: sha256 differs from bundle.json")
    if problems:
        raise BundleError(
            f"Bundle {root} failed its integrity check ({'; '.join(problems)}). The bundle was modified or "
            "copied incompletely: copy it again from the build machine or re-run `edgeseg export`."
        )
