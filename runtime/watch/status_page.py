"""The watcher's read-only status page: ``/`` (HTML for people), ``/api/status`` (the same snapshot as JSON),
``/healthz`` (for service monitors), ``/metrics`` (Prometheus text, names prefixed ``edgeseg_``) and
``/preview?key=<series key>`` (a result's preview image).

The standard library's HTTP server in one thread, started and stopped by the watcher's lifecycle
(:class:`~edgeseg.runtime.watch.service.Watcher`), off unless ``status_page.enabled``. Bounded so that no stranger
can hold it: each connection is served by a daemon thread with a socket timeout (:data:`REQUEST_TIMEOUT_S`, TLS
handshake included, done in that thread, never in the accepting one), at most :data:`MAX_CONNECTIONS` at a time
(more are closed at once), GET and HEAD only, nothing read from a request body. With a ``token`` every path but
``/healthz`` needs it (``?token=``, ``Authorization: Bearer``, or the cookie the page sets when opened with
``?token=``); a bind address other than loopback without a token is refused when the configuration is loaded.
TLS: the DICOM listener's certificate and key, when it has them.

Everything shown is escaped (patient names, IDs and descriptions are hostile input); the page runs no script
(Content-Security-Policy ``default-src 'none'``) and refreshes itself every :data:`REFRESH_S` seconds. The only
file it serves is a result's ``preview.png``, after the path check of
:func:`~edgeseg.runtime.watch.status_report.preview_path`.
"""
from __future__ import annotations

import hmac
import html
import json
import logging
import queue
import socket
import ssl
import threading
import time
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlsplit

from edgeseg.runtime.node.settings import TlsSettings
from edgeseg.runtime.watch.config import StatusPageSettings, WatchConfig
from edgeseg.runtime.watch.heartbeat import Heartbeat, Running
from edgeseg.runtime.watch.state_view import age
from edgeseg.runtime.watch.status_report import RESULT_COLUMNS, collect, preview_path, result_cells
from edgeseg.runtime.watch.store import DELIVERY_STATES, STATES, JobStore

log = logging.getLogger(__name__)

#: seconds a connection may take for its request (and TLS handshake) and for our answer
REQUEST_TIMEOUT_S = 10.0
#: connections served at the same time; more are closed at once
MAX_CONNECTIONS = 8
#: a heartbeat older than this makes /healthz answer 503
HEALTHY_BEAT_AGE_S = 30.0
#: the page reloads itself every this many seconds
REFRESH_S = 10
COOKIE = "edgeseg_token"
_MAX_PREVIEW_BYTES = 32 * 2**20


class ReceiveCounter:
    """Instances the DICOM listener stored in this process (``edgeseg_received_instances_total``): wraps the
    listener's event callback (:meth:`wrap`), counting each ``Stored`` hint before passing it on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def wrap(self, put: Callable[[Any], None]) -> Callable[[Any], None]:
        from edgeseg.runtime.node.receive import Stored

        def on_event(event: Any) -> None:
            if isinstance(event, Stored):
                with self._lock:
                    self.count += 1
            put(event)
        return on_event


class WatcherView:
    """What the page reads of a running watcher (all thread-safe: the store's lock, :class:`Running`'s lock, the
    heartbeat's last written data, the results copied under the GIL). ``alive``: the watcher's threads all run."""

    def __init__(self, config: WatchConfig, store: JobStore, *, heartbeat: Heartbeat, running: Running,
                 jobs: queue.Queue[Any], stats: Counter[str], results: dict[str, Any], alive: Callable[[], bool],
                 received: ReceiveCounter) -> None:
        self.config = config
        self.store = store
        self.heartbeat = heartbeat
        self.running = running
        self.jobs = jobs
        self.stats = stats
        self.results = results
        self.alive = alive
        self.received = received

    def health(self, now: float | None = None) -> tuple[bool, str]:
        """(healthy, why): the watcher's threads alive and its last heartbeat at most :data:`HEALTHY_BEAT_AGE_S`
        old."""
        now = time.time() if now is None else now
        if self.heartbeat.fatal is not None:
            return False, f"stopped: {self.heartbeat.fatal}"
        if not self.alive():
            return False, "a watcher thread is not running"
        beat = self.heartbeat.last_beat_at
        if beat is None or now - beat > HEALTHY_BEAT_AGE_S:
            return False, "no heartbeat yet" if beat is None else f"last heartbeat {age(now - beat)} ago"
        return True, "ok"

    def snapshot(self, limit: int = 20) -> dict[str, Any]:
        now = time.time()
        healthy, why = self.health(now)
        beat = self.heartbeat.last or {}
        watcher = {"state": "running" if healthy else f"NOT HEALTHY ({why})", "healthy": healthy,
                   "pid": beat.get("pid"), "started_at": self.heartbeat.started_at,
                   "heartbeat_at": self.heartbeat.last_beat_at, "listener": self.heartbeat.listener}
        return collect(self.store, self.config, limit=limit, watcher=watcher, running=self.running.snapshot(),
                       queued=self.jobs.qsize(), arriving=list(beat.get("open_series") or []), now=now)

    def metrics(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        snap = self.snapshot(limit=1)
        healthy = snap["watcher"]["healthy"]
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
            lines.append(f"# HELP edgeseg_{name} {help_text}")
            lines.append(f"# TYPE edgeseg_{name} {kind}")
            for labels, value in samples:
                text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
                lines.append(f"edgeseg_{name}{{{text}}} {value:g}" if text else f"edgeseg_{name} {value:g}")

        family("up", "gauge", "1 while the watcher's threads run and its heartbeat is fresh.", [({}, int(healthy))])
        family("series", "gauge", "Series in the job store by state.",
               [({"state": s}, snap["counts"].get(s, 0)) for s in STATES])
        family("queued_series", "gauge", "Complete series waiting for a worker.", [({}, snap["queue"]["queued"])])
        family("arriving_series", "gauge", "Series still arriving (waiting for the quiet period).",
               [({}, len(snap["queue"]["arriving"]))])
        family("running_series", "gauge", "Series being segmented now.", [({}, len(snap["running"]))])
        stats = dict(self.stats)
        family("series_outcomes_total", "counter", "Series finished by this process, by outcome.",
               [({"outcome": o}, stats.get(o, 0)) for o in ("done", "partial", "failed", "skipped", "undelivered")])
        stages: dict[str, float] = {}
        segmented = 0
        for result in list(self.results.values()):
            timings = getattr(result, "timings", None) or {}
            segmented += 1
            for stage, seconds in timings.items():
                if stage != "total" and isinstance(seconds, (int, float)):
                    stages[stage] = stages.get(stage, 0.0) + float(seconds)
        family("stage_seconds_total", "counter", "Seconds spent per pipeline stage by this process.",
               [({"stage": s}, round(v, 3)) for s, v in sorted(stages.items())])
        family("results_total", "counter", "Results written by this process.", [({}, segmented)])
        family("deliveries", "gauge", "Deliveries in the outbox by destination and state.",
               [({"destination": d, "state": s}, n) for d, c in sorted(snap["deliveries"]["by_destination"].items())
                for s, n in c.items()])
        family("deliveries_total", "gauge", "Deliveries in the outbox by state.",
               [({"state": s}, snap["deliveries"]["counts"].get(s, 0)) for s in DELIVERY_STATES])
        family("received_instances_total", "counter", "DICOM instances the listener stored (rate() of it: the "
               "receive rate).", [({}, self.received.count)])
        family("free_bytes", "gauge", "Free bytes of the file system of each watched root and the state folder.",
               [({"path": d["path"]}, d["free_bytes"]) for d in snap["disk"]["paths"]])
        beat = self.heartbeat.last_beat_at
        family("heartbeat_age_seconds", "gauge", "Seconds since the watcher's last heartbeat.",
               [({}, round(time.time() - beat, 3) if beat else -1)])
        return "\n".join(lines) + "\n"


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# ---------------------------------------------------------------------------------------------------- HTML

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#111;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;font-size:.9em} th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;
vertical-align:top} th{background:#eee} .bad{color:#a00;font-weight:bold} .ok{color:#070;font-weight:bold}
.muted{color:#666} .remedy{max-width:48em}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]], raw_columns: tuple[int, ...] = ()) -> str:
    """An HTML table; every cell escaped unless its column is in ``raw_columns`` (markup built here)."""
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if i in raw_columns else _e(c)}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _preview_url(key: str) -> str:
    return "/preview?key=" + quote(key, safe="")


def _progress_cell(fraction: float) -> str:
    return f'<progress max="1" value="{fraction:.3f}"></progress> {100 * fraction:.0f} %'


def render_html(snap: dict[str, Any]) -> str:
    """The page of a snapshot (:func:`~edgeseg.runtime.watch.status_report.collect`)."""
    w = snap["watcher"]
    parts = [f"<h1>edgeseg watcher — {_e(snap['site'])}</h1>",
             f"<p>Watcher: <span class=\"{'ok' if w.get('healthy') else 'bad'}\">{_e(w.get('state'))}</span>"
             f" · {', '.join(f'{_e(n)} {_e(s)}' for s, n in snap['counts'].items())}"
             f" · <span class=\"muted\">{_e(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(snap['generated_at'])))}"
             f"</span></p>"]
    queue_ = snap["queue"]
    parts.append(f"<h2>Queue</h2><p>{_e(queue_['queued'])} complete series waiting for a worker.</p>")
    parts.append(_table(["ARRIVING", "FILES", "QUIET FOR"],
                        [[a.get("name", ""), str(a.get("files", "")), f"{a.get('quiet_for_s', 0):.0f} s"]
                         for a in queue_["arriving"]]))
    parts.append("<h2>Running</h2>")
    parts.append(_table(
        ["SERIES", "PATIENT ID", "ACCESSION", "STAGE", "PROGRESS", "RUNNING FOR"],
        [[r.get("description") or r.get("name", ""), r.get("patient_id", ""), r.get("accession", ""),
          r.get("stage", ""),
          _progress_cell(float(r.get("fraction", 0))),
          f"{r.get('running_for_s', 0):.0f} s"] for r in snap["running"]], raw_columns=(4,)))
    recent = snap["recent"]
    latest = next((r for r in recent if r.get("preview")), None)
    if latest is not None:
        parts.append(f"<h2>Latest preview</h2><p>{_e(latest.get('description') or latest['name'])} · patient "
                     f"{_e(latest.get('patient_id') or '-')} · accession {_e(latest.get('accession') or '-')}</p>"
                     f'<img id="latest-preview" src="{_e(_preview_url(latest["key"]))}" alt="preview of '
                     f'{_e(latest["name"])}">')
    parts.append("<h2>Recent results</h2>")
    parts.append(_table(
        [h for h, _ in RESULT_COLUMNS] + ["PREVIEW", "NAME"],
        [result_cells(r) + [f'<a href="{_e(_preview_url(r["key"]))}">preview</a>' if r.get("preview") else "-",
                            r["name"]] for r in recent],
        raw_columns=(len(RESULT_COLUMNS),)))
    parts.append("<h2>Failures</h2>")
    parts.append(_table(["UPDATED", "STATE", "SERIES", "PATIENT ID", "KIND", "ERROR", "WHAT TO DO"],
                        [[f["updated"], f["state"], f.get("description") or f["name"], f.get("patient_id", ""),
                          f.get("error_kind") or "", (f.get("error") or "")[:400], f.get("remedy", "")]
                         for f in snap["failures"]]))
    dl = snap["deliveries"]
    parts.append("<h2>Deliveries</h2>")
    parts.append(_table(["DESTINATION", *(s.upper() for s in DELIVERY_STATES)],
                        [[d, *(str(c.get(s, 0)) for s in DELIVERY_STATES)]
                         for d, c in sorted(dl["by_destination"].items())]))
    if dl["open"]:
        parts.append(_table(["DESTINATION", "ROLE", "STATE", "TRIES", "LAST ERROR", "SERIES"],
                            [[d["destination"], d["role"], d["state"], str(d["attempts"]), d["last_error"] or "",
                              d["series"]] for d in dl["open"]]))
    al = snap["alerts"]
    parts.append("<h2>Alerts</h2>" + ("" if al["webhook"] else '<p class="muted">no webhook configured</p>'))
    if al["recent"]:
        parts.append(_table(["EVENT", "SUBJECT", "STATE", "TRIES", "LAST ERROR"],
                            [[a["event"], a["subject"], a["state"], str(a["attempts"]), a["last_error"] or ""]
                             for a in al["recent"]]))
    disk = snap["disk"]
    parts.append("<h2>Disk</h2>")
    parts.append(_table(["PATH", "FREE", "TOTAL", "ALERT BELOW"],
                        [[d["path"], f"{d['free_bytes'] / 2**30:.1f} GB", f"{d['total_bytes'] / 2**30:.1f} GB",
                          f"{disk['alert_below_mb'] / 1024:.1f} GB"] for d in disk["paths"]]))
    parts.append(f"<p class=\"muted\">Retention: {_e(disk['retention'])}</p>")
    if disk.get("forecast"):
        parts.append("<ul>" + "".join(f"<li>{_e(line)}</li>" for line in disk["forecast"]) + "</ul>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"refresh\" content=\"{REFRESH_S}\"><title>edgeseg status</title>"
            f"<style>{_STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>")


# ---------------------------------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], page: StatusPage,
                 family: int) -> None:
        self.address_family = family
        self.page = page
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # every slot taken: close at once, hold nothing
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that failed its TLS handshake, timed out or hung up: logged, not printed to stderr."""
        log.debug("status page: connection from %s ended with an error", client_address, exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    server_version = "edgeseg-status"
    sys_version = ""
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        self.request.settimeout(REQUEST_TIMEOUT_S)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # in this thread, under the timeout
        super().setup()
        self.request.settimeout(REQUEST_TIMEOUT_S)  # setup() put the class's timeout on it

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("status page: %s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        page = self.server.page
        view = page.view
        assert view is not None  # served only after serve(view)
        url = urlsplit(self.path)
        try:
            try:
                query = parse_qs(url.query, max_num_fields=4)
            except ValueError:
                self._send(HTTPStatus.BAD_REQUEST, "text/plain; charset=utf-8", b"bad query\n", head)
                return
            if url.path == "/healthz":
                healthy, why = view.health()
                self._send(HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE, "text/plain; charset=utf-8",
                           (why + "\n").encode(), head)
                return
            via_query = self._authorized(query)
            if via_query is None:
                self._send(HTTPStatus.UNAUTHORIZED, "text/plain; charset=utf-8",
                           b"the status page needs its token: open it as /?token=<status_page.token>\n", head)
                return
            cookie = via_query if url.path == "/" else None
            if url.path == "/":
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", render_html(view.snapshot()).encode(),
                           head, cookie=cookie)
            elif url.path == "/api/status":
                self._send(HTTPStatus.OK, "application/json", json.dumps(view.snapshot(), default=str).encode(),
                           head)
            elif url.path == "/metrics":
                self._send(HTTPStatus.OK, "text/plain; version=0.0.4; charset=utf-8", view.metrics().encode(),
                           head)
            elif url.path == "/preview":
                self._preview(query.get("key", [""])[0], head)
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n", head)
        except (OSError, ssl.SSLError):
            raise
        except Exception:  # noqa: BLE001 - a page that fails must not take the thread's error to the client
            log.exception("status page: %s failed", url.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"internal error\n", head)

    def _authorized(self, query: dict[str, list[str]]) -> str | None:
        """None when a token is configured and the request has not got it; else the token when it came in the
        query (the page then sets its cookie), or ""."""
        token = self.server.page.settings.token
        if not token:
            return ""
        given = query.get("token", [""])[0]
        if given and hmac.compare_digest(given.encode(), token.encode()):
            return token
        bearer = self.headers.get("Authorization", "")
        if bearer.startswith("Bearer ") and hmac.compare_digest(bearer[7:].strip().encode(), token.encode()):
            return ""
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), token.encode()):
                return ""
        return None

    def _preview(self, key: str, head: bool) -> None:
        view = self.server.page.view
        row = view.store.get(key) if key and view is not None else None
        path = preview_path(row) if row is not None else None
        data = None
        if path is not None:
            try:
                if path.stat().st_size <= _MAX_PREVIEW_BYTES:
                    data = path.read_bytes()
            except OSError:
                data = None
        if data is None:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"no preview\n", head)
            return
        self._send(HTTPStatus.OK, "image/png", data, head)

    def _send(self, status: HTTPStatus, content_type: str, body: bytes, head: bool, cookie: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'")
        if cookie:
            secure = "; Secure" if self.server.page.tls is not None else ""
            self.send_header("Set-Cookie", f"{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict{secure}")
        self.end_headers()
        if not head:
            self.wfile.write(body)


class StatusPage:
    """The status page of one watcher (the :class:`WatcherView` given to :meth:`serve`), on
    ``settings.bind_address:settings.port`` (0: a free port);
    ``tls``: the DICOM listener's certificate and key (None: plain HTTP)."""

    def __init__(self, settings: StatusPageSettings, tls: TlsSettings | None = None) -> None:
        self.settings = settings
        #: what is shown (:meth:`serve` sets it)
        self.view: WatcherView | None = None
        self.tls = tls
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "status page not started"
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The page's address (``http(s)://host:port/``)."""
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}/"

    def bind(self) -> None:
        """Bind the address (nothing is served yet). Raises :class:`~edgeseg.errors.ConfigError` when it cannot be
        bound (port in use) or the TLS files do not load."""
        from edgeseg.errors import ConfigError

        s = self.settings
        family = socket.AF_INET6 if ":" in s.bind_address else socket.AF_INET
        try:
            server = _Server((s.bind_address, s.port), _Handler, self, family)
        except OSError as err:
            raise ConfigError(f"The status page cannot listen on {s.bind_address}:{s.port} ({err.strerror or err}). "
                              "Fix: choose a free status_page.port (or stop what uses it).") from err
        if self.tls is not None:
            try:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(str(self.tls.certificate), str(self.tls.key))
            except (OSError, ssl.SSLError) as err:
                server.server_close()
                raise ConfigError(f"The status page cannot load the listener's TLS certificate ({err}). Fix: check "
                                  "dicom_listener.tls_certificate and tls_key.") from err
            server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server

    def serve(self, view: WatcherView) -> None:
        """Serve ``view`` in a daemon thread (binds first when :meth:`bind` was not called)."""
        if self._server is None:
            self.bind()
        assert self._server is not None
        self.view = view
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="edgeseg-status-page", daemon=True)
        self._thread.start()
        log.info("status page: %s", self.url)

    def stop(self) -> None:
        if self._server is None:
            return
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

