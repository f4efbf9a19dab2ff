"""What the watcher's status looks like to people and monitors: one snapshot (:func:`collect`) that the status page
(``/``, ``/api/status``, ``/metrics``: :mod:`edgeseg.runtime.watch.status_page`) and ``edgeseg status`` both show.

A snapshot is plain JSON data: the watcher's state, the counts by state, the queue (series waiting for a worker
and series still arriving), the running series with their progress, the recent results (patient ID, accession,
series description, model, precision, seconds, whether a preview exists), the failures with their remedy (the error
file's own words, else the error kind's), the deliveries per destination, the alerts and the free disk space of
the roots and the state folder. Patient data in it is data: whoever renders it escapes it.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from edgeseg.errors import UNEXPECTED_KIND, UNEXPECTED_REMEDY, EdgesegError, error_classes, remedy_for
from edgeseg.runtime.naming import error_file_name
from edgeseg.runtime.watch.config import WatchConfig
from edgeseg.runtime.watch.state_view import age
from edgeseg.runtime.watch.store import FAILED, PARTIAL, JobRow, JobStore
from edgeseg.runtime.write.preview import PREVIEW_FILE

#: the human columns of a result, in order: the page's table and ``edgeseg status``'s (header, snapshot field)
RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("UPDATED", "updated"), ("STATE", "state"), ("PATIENT ID", "patient_id"), ("ACCESSION", "accession"),
    ("SERIES", "description"), ("MODEL", "model"), ("PRECISION", "precision"), ("SECONDS", "seconds"),
)


def preview_path(row: JobRow) -> Path | None:
    """The result's preview image (``<output>/preview.png``) when it is a regular file inside the output folder
    (no link out of it), else None. The only file the status page serves."""
    out = row.output_dir
    if out is None:
        return None
    candidate = out / PREVIEW_FILE
    try:
        if candidate.is_symlink() or not candidate.is_file():
            return None
        resolved, parent = candidate.resolve(strict=True), out.resolve(strict=True)
    except OSError:
        return None
    return resolved if resolved.parent == parent else None


def remedy_of(row: JobRow, config: WatchConfig) -> str:
    """What to do about a failed or partial series: the error file's ``what_to_do`` when it is there, else the
    remedy of its error kind."""
    try:
        data = json.loads((row.folder_path / error_file_name(row.name)).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("what_to_do"), str):
            return data["what_to_do"]
    except (OSError, ValueError):
        pass
    if row.error_kind == UNEXPECTED_KIND:
        return UNEXPECTED_REMEDY.format(log_file=config.log_file)
    cls = next((c for c in error_classes() if c.kind == row.error_kind), EdgesegError)
    return remedy_for(cls, device=config.device, folder=row.output_dir or row.folder_path, log_file=config.log_file)


def result_entry(row: JobRow, now: float, config: WatchConfig | None = None) -> dict[str, Any]:
    """One series of the snapshot: its key and name, the human columns (:data:`RESULT_COLUMNS`), times, the
    output folder, whether it has a preview, and for a failed or partial series the error and its remedy."""
    entry: dict[str, Any] = {
        "key": row.key, "name": row.name, "state": row.state, "attempts": row.attempts,
        "patient_id": row.patient_id or "", "accession": row.accession or "", "description": row.description,
        "model": row.model or "", "precision": row.precision or "",
        "seconds": None if row.actual_s is None else round(row.actual_s, 1),
        "predicted_s": None if row.predicted_s is None else round(row.predicted_s, 1),
        "updated_at": row.updated_at, "updated": age(now - row.updated_at) + " ago",
        "folder": row.folder, "output": row.output_path,
        "preview": preview_path(row) is not None,
        "error_kind": row.error_kind, "error": row.last_error,
    }
    if config is not None and row.state in (FAILED, PARTIAL):
        entry["remedy"] = remedy_of(row, config)
    return entry


def result_cells(entry: dict[str, Any]) -> list[str]:
    """The :data:`RESULT_COLUMNS` of a snapshot entry as text cells."""
    def cell(field: str) -> str:
        value = entry.get(field)
        if field == "seconds":
            return "-" if value is None else f"{value:.1f}"
        return str(value or "-").replace("\n", " ")
    return [cell(field) for _, field in RESULT_COLUMNS]


#: (store path) -> (when computed, forecast lines): the forecast walks result folders, so a page polled by a monitor
#: recomputes it at most every :data:`FORECAST_TTL_S`
_FORECASTS: dict[Path, tuple[float, list[str]]] = {}
FORECAST_TTL_S = 300.0


def retention_forecast(store: JobStore, config: WatchConfig, now: float) -> list[str]:
    """``doctor``'s disk forecast (:meth:`~edgeseg.runtime.watch.retention.Retention.forecast`): per root the free
    space, what arrived per day, what the policy may remove and when the watermark is reached."""
    from edgeseg.runtime.watch.retention import Retention

    cached = _FORECASTS.get(config.store_path)
    if cached is not None and now - cached[0] < FORECAST_TTL_S:
        return cached[1]
    lines = Retention(store, config.retention, config.roots, config.received_root).forecast()
    _FORECASTS[config.store_path] = (now, lines)
    return lines


def disk_usage(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Free and total bytes of each path's file system (one entry per distinct path; unreadable ones left out)."""
    out = []
    for path in dict.fromkeys(paths):
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            continue
        out.append({"path": str(path), "free_bytes": usage.free, "total_bytes": usage.total,
                    "free_mb": round(usage.free / 2**20, 1)})
    return out


def collect(store: JobStore, config: WatchConfig, *, limit: int = 20, watcher: dict[str, Any] | None = None,
            running: list[dict[str, Any]] | None = None, queued: int = 0,
            arriving: list[dict[str, Any]] | None = None, now: float | None = None) -> dict[str, Any]:
    """The snapshot. ``watcher``: the watcher's state as the caller knows it (liveness text, pid, start, health);
    ``running``: :meth:`~edgeseg.runtime.watch.heartbeat.Running.snapshot` (or the heartbeat file's keys);
    ``queued``/``arriving``: series waiting for a worker, series still arriving (the tracker's pending list)."""
    now = time.time() if now is None else now
    recent = store.rows(limit=limit)
    failures = [r for r in store.rows(FAILED, limit=limit)] + [r for r in store.rows(PARTIAL, limit=limit)]
    failures.sort(key=lambda r: r.updated_at, reverse=True)
    rows_by_key = {r.key: r for r in recent}
    running_entries = []
    for item in running or []:
        row = rows_by_key.get(item["key"]) or store.get(item["key"])
        entry = result_entry(row, now) if row is not None else {"key": item["key"], "name": item["key"]}
        entry.update({"stage": item.get("stage", ""), "fraction": round(float(item.get("fraction") or 0.0), 3),
                      "running_for_s": round(now - float(item.get("since") or now), 1)})
        running_entries.append(entry)
    by_destination = store.delivery_counts_by_destination()
    open_deliveries = [*store.deliveries(FAILED, limit=limit), *store.deliveries("pending", limit=limit)]
    return {
        "generated_at": now,
        "site": config.alerts.site,
        "watcher": watcher or {},
        "counts": store.counts(),
        "queue": {"queued": queued, "arriving": arriving or []},
        "running": running_entries,
        "recent": [result_entry(r, now, config) for r in recent],
        "failures": [result_entry(r, now, config) for r in failures[:limit]],
        "deliveries": {
            "counts": store.delivery_counts(),
            "by_destination": by_destination,
            "open": [{"destination": d.destination, "role": d.role, "state": d.state, "attempts": d.attempts,
                      "last_error": d.last_error, "series": d.job_key, "next_at": d.next_at}
                     for d in open_deliveries],
        },
        "alerts": {"webhook": config.alerts.webhook_url is not None,
                   "recent": [{"event": a.event, "subject": a.subject, "state": a.state, "attempts": a.attempts,
                               "last_error": a.last_error, "at": a.occurred_at} for a in store.alerts(limit=10)]},
        "disk": {"paths": disk_usage([*config.roots, config.state_dir]),
                 "alert_below_mb": config.alerts.disk_min_free_mb,
                 "retention": config.retention.describe(),
                 "forecast": retention_forecast(store, config, now)},
    }
