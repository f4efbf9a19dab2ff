"""``manifest.json``: what was run and what was written, for audit and for the watcher."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from edgeseg import __version__
from edgeseg.typing import StrPath

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"


def _default(obj: Any) -> Any:
    """JSON fallback: paths and other objects as strings, numpy scalars/arrays as Python values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def write_manifest(path: StrPath, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``manifest`` plus ``writer`` ({"name": "edgeseg", "version": ...}) and ``written_utc`` (ISO 8601)
    as JSON; returns the dict as written (values not JSON-native are converted, e.g. paths to strings)."""
    record = dict(manifest)
    record["writer"] = {"name": "edgeseg", "version": __version__}
    record["written_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = json.dumps(record, indent=1, ensure_ascii=False, default=_default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a name that is not valid Unicode (Latin-1 on Linux): JSON's \u escapes instead
        text = json.dumps(record, indent=1, default=_default)
    Path(path).write_text(text + "\n", encoding="utf-8")
    written: dict[str, Any] = json.loads(text)
    return written
