"""Alerts: a JSON POST to the site's ``alerts.webhook_url`` when nobody at a console would notice something.

Events (``event`` in the JSON):

* ``series_failed``: a series was given up (failed and not retried automatically any more: bad input, a
  configuration every series fails on, or ``max_attempts`` reached);
* ``delivery_given_up``: a result's deliveries to a destination were given up (refused for good, or not accepted
  within ``delivery.max_age_h``);
* ``disk_low``: free space of a watched root's or the state folder's file system fell below
  ``alerts.disk_min_free_mb`` (once; again only after it recovered by 10 %).

The :class:`Alerter` thread finds them in the job store (rows that became so since the watcher started: the
scheduler and workers are not involved) and queues each in the store's ``alerts`` table (one row per event,
subject and time, so a restart does not repeat one), then POSTs what is due; a failed POST is retried with
back-off (30 s doubling to 1 h) until ``alerts.max_age_h``, then dropped with a warning in the log. The payload
names the site, the series (name, description, SeriesInstanceUID), the error kind, message and remedy; no patient
name, ID or accession. Only the configured URL is contacted: no proxy from the environment, no redirect followed.
"""
from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edgeseg import __version__
from edgeseg.runtime.watch.config import WatchConfig
from edgeseg.runtime.watch.status_report import remedy_of
from edgeseg.runtime.watch.store import FAILED, PENDING, SENT, AlertRow, JobStore

log = logging.getLogger(__name__)

SERIES_FAILED, DELIVERY_GIVEN_UP, DISK_LOW = "series_failed", "delivery_given_up", "disk_low"
#: seconds between looks at the store and the disks
SCAN_INTERVAL_S = 5.0
#: seconds to wait for the webhook's answer
POST_TIMEOUT_S = 10.0
RETRY_INITIAL_S, RETRY_MAX_S = 30.0, 3600.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would send the alert to another address than the configured one: it is an error."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} not followed", headers, fp)


def post_json(url: str, payload: bytes, timeout: float = POST_TIMEOUT_S) -> None:
    """POST ``payload`` (JSON) to ``url``; raises OSError (urllib's errors are OSErrors) unless it answered 2xx."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    request = urllib.request.Request(url, data=payload, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": f"edgeseg/{__version__}"})
    with opener.open(request, timeout=timeout) as answer:
        if not 200 <= answer.status < 300:
            raise urllib.error.HTTPError(url, answer.status, answer.reason, answer.headers, None)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


class Alerter:
    """Finds alert events in ``store`` from ``since`` on, queues and sends them, until ``stop`` is set (:meth:`run`
    in its own thread). ``post``: the sender (tests); ``disks``: the paths whose free space is watched (default:
    the roots and the state folder)."""

    def __init__(self, config: WatchConfig, store: JobStore, stop: threading.Event, since: float, *,
                 post: Callable[[str, bytes], None] | None = None, disks: list[Path] | None = None,
                 interval_s: float | None = None) -> None:
        assert config.alerts.webhook_url is not None
        self.config = config
        self.settings = config.alerts
        self.url: str = config.alerts.webhook_url
        self.store = store
        self.stop = stop
        self.interval_s = SCAN_INTERVAL_S if interval_s is None else interval_s
        self._post = post or post_json
        self._since_jobs = self._since_deliveries = since
        self._disks = list(dict.fromkeys(disks if disks is not None else [*config.roots, config.state_dir]))
        self._low: set[str] = set()

    def run(self) -> None:
        """The alert thread: look and send every ``interval_s`` (and once more after ``stop``, to queue what the
        last seconds produced)."""
        while True:
            stopping = self.stop.is_set()
            try:
                self.scan()
                if not stopping:
                    self.send_due()
            except Exception:  # noqa: BLE001 - alerts must never take the watcher down
                log.exception("alerts: a round failed")
            if stopping:
                return
            self.stop.wait(self.interval_s)

    # ----------------------------------------------------------------------------------------------- finding

    def _payload(self, event: str, subject: str, at: float, message: str, **extra: Any) -> str:
        return json.dumps({"source": "edgeseg", "version": __version__, "site": self.settings.site, "event": event,
                           "subject": subject, "at": _iso(at), "message": message, **extra}, default=str)

    def scan(self, now: float | None = None) -> int:
        """Queue the alerts of what happened since the last look; returns how many were queued."""
        now = time.time() if now is None else now
        queued = 0
        for row in self.store.given_up_since(self._since_jobs, self.config.max_attempts):
            self._since_jobs = max(self._since_jobs, row.updated_at)
            payload = self._payload(
                SERIES_FAILED, row.name, row.updated_at,
                f"Series {row.description or row.name} failed and is not retried automatically: {row.last_error}",
                series={"name": row.name, "description": row.description, "series_uid": row.series_uid,
                        "attempts": row.attempts},
                error_kind=row.error_kind, remedy=remedy_of(row, self.config))
            queued += self.store.add_alert(SERIES_FAILED, row.key, row.updated_at, payload)
        groups: dict[tuple[str, str], list[Any]] = {}
        for d in self.store.deliveries_failed_since(self._since_deliveries):
            self._since_deliveries = max(self._since_deliveries, d.updated_at)
            groups.setdefault((d.destination, d.job_key), []).append(d)
        for (destination, key), rows in groups.items():
            at = max(d.updated_at for d in rows)
            job = self.store.get(key)
            name = job.name if job is not None else key
            payload = self._payload(
                DELIVERY_GIVEN_UP, f"{destination}: {name}", at,
                f"{', '.join(sorted({d.role.upper() for d in rows}))} of {name} not delivered to {destination}: "
                f"{rows[-1].last_error}",
                destination=destination,
                series={"name": name, "description": job.description if job else "",
                        "series_uid": job.series_uid if job else None},
                remedy="Fix what the message names at the destination, then `edgeseg deliver --retry`.")
            queued += self.store.add_alert(DELIVERY_GIVEN_UP, f"{destination}\t{key}", at, payload)
        queued += self._scan_disks(now)
        if queued:
            log.info("alerts queued: %d", queued)
        return queued

    def _scan_disks(self, now: float) -> int:
        floor_mb = self.settings.disk_min_free_mb
        queued = 0
        for path in self._disks:
            try:
                free_mb = shutil.disk_usage(path).free / 2**20
            except OSError:
                continue
            key = str(path)
            if free_mb < floor_mb and key not in self._low:
                self._low.add(key)
                log.warning("disk space low: path=%s free_mb=%.0f below alerts.disk_min_free_mb=%.0f", key, free_mb,
                            floor_mb)
                payload = self._payload(
                    DISK_LOW, key, now, f"Only {free_mb:.0f} MB free on the disk of {key} (alert below "
                    f"{floor_mb:.0f} MB).", path=key, free_mb=round(free_mb, 1), min_free_mb=floor_mb,
                    remedy="Free space on that disk: move delivered results and received images away (or set a "
                           "retention policy); below dicom_listener.min_free_mb the listener refuses new images.")
                queued += self.store.add_alert(DISK_LOW, key, now, payload)
            elif free_mb >= floor_mb * 1.1 and key in self._low:
                self._low.discard(key)
                log.info("disk space recovered: path=%s free_mb=%.0f", key, free_mb)
        return queued

    # ----------------------------------------------------------------------------------------------- sending

    def send_due(self, now: float | None = None) -> int:
        """POST every due alert once; returns how many were sent."""
        now = time.time() if now is None else now
        sent = 0
        for alert in self.store.due_alerts(now):
            if self.stop.is_set() and sent:
                break
            sent += self._send(alert, now)
        return sent

    def _send(self, alert: AlertRow, now: float) -> bool:
        try:
            self._post(self.url, alert.payload.encode("utf-8"))
        except Exception as err:  # noqa: BLE001 - URLError, HTTPError, timeouts, TLS: all retried the same way
            error = f"{type(err).__name__}: {err}"
            if now - alert.created_at >= self.settings.max_age_h * 3600:
                log.warning("alert dropped after %.0f h of failed attempts: event=%s subject=%s error=%s",
                            self.settings.max_age_h, alert.event, alert.subject, error)
                self.store.alert_done(alert.id, FAILED, error)
            else:
                wait = min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** alert.attempts)
                log.info("alert not sent, retrying in %.0f s: event=%s error=%s", wait, alert.event, error)
                self.store.alert_done(alert.id, PENDING, error, next_at=now + wait)
            return False
        self.store.alert_done(alert.id, SENT)
        log.info("alert sent: event=%s subject=%s", alert.event, alert.subject)
        return True
