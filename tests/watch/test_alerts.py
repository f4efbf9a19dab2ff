"""The alerts webhook: a real HTTP receiver on loopback (standard library) gets JSON POSTs for a series given up, a
delivery given up and a disk below the watermark; a failing receiver is retried from the job store; no redirect is
followed."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from watch_helpers import wait_for, write_series

import edgeseg.runtime.watch.alerts as alerts
from edgeseg.errors import InvalidSeriesError
from edgeseg.runtime.watch.store import DeliveryRequest, JobStore


class Receiver:
    """A webhook receiver: records each POST's JSON; answers ``codes`` in turn (then 200)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.codes: list[int] = []
        self.location = ""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = receiver.codes.pop(0) if receiver.codes else 200
                if code == 200:
                    receiver.posts.append({"path": self.path, "type": self.headers["Content-Type"],
                                           **json.loads(body)})
                self.send_response(code)
                if code in (301, 302, 307):
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/edgeseg"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts, "SCAN_INTERVAL_S", 0.1)
    monkeypatch.setattr(alerts, "RETRY_INITIAL_S", 0.2)


def test_a_series_given_up_is_posted_once_retried_until_taken(start_watcher, segmenter, roots: Path,
                                                                receiver: Receiver) -> None:
    write_series(roots / "p1" / "bad")
    segmenter.fail["bad"] = InvalidSeriesError("the slices do not form a volume")
    receiver.codes = [500, 503]  # the webhook is down twice, then takes it
    w = start_watcher(**{"alerts.webhook_url": receiver.url, "alerts.site": "MR3 Nordklinik",
                         "alerts.disk_min_free_mb": 0})
    assert wait_for(lambda: len(receiver.posts) == 1, timeout=30)
    [post] = receiver.posts
    assert post["path"] == "/hooks/edgeseg" and post["type"] == "application/json"
    assert post["event"] == "series_failed" and post["site"] == "MR3 Nordklinik"
    assert post["error_kind"] == "invalid_series" and "do not form a volume" in post["message"]
    assert post["remedy"] and post["series"]["series_uid"]
    assert "patient_id" not in json.dumps(post).lower()
    assert w.store is not None
    [alert] = w.store.alerts()
    assert (alert.state, alert.attempts, alert.last_error) == ("sent", 3, None)
    time.sleep(0.5)
    assert len(receiver.posts) == 1  # queued once: the same failure is not alerted again


def test_disk_watermark_and_given_up_delivery(start_watcher, receiver: Receiver, tmp_path: Path) -> None:
    w = start_watcher(**{"alerts.webhook_url": receiver.url, "alerts.disk_min_free_mb": 1e12})
    assert wait_for(lambda: {p["event"] for p in receiver.posts} == {"disk_low"}, timeout=30)
    assert {p["path"] for p in receiver.posts} >= {str(tmp_path / "incoming"), str(tmp_path / "state")}
    n = len(receiver.posts)
    # a delivery given up (what the delivery thread records), seen by the alert thread
    assert w.store is not None
    w.store.discover("k1", "dicom", tmp_path, "s1", description="T1")
    w.store.mark_done("k1", None, 1.0, deliveries=[DeliveryRequest("pacs", "seg", tmp_path / "seg.dcm", "1.2.3")])
    [d] = w.store.deliveries()
    w.store.delivery_failed(d.id, "A-ASSOCIATE-RJ: calling AE title not recognised")
    assert wait_for(lambda: len(receiver.posts) == n + 1, timeout=30)
    post = receiver.posts[-1]
    assert post["event"] == "delivery_given_up" and post["destination"] == "pacs" and "SEG" in post["message"]
    time.sleep(0.5)
    assert len(receiver.posts) == n + 1  # the disk is still low: not alerted again


def test_a_redirect_is_not_followed_and_alerts_expire(tmp_path: Path, receiver: Receiver) -> None:
    """The webhook redirecting elsewhere is an error (only the configured URL is contacted); an alert not taken
    within alerts.max_age_h is dropped."""
    from edgeseg.runtime.watch.config import load_config

    other = Receiver()
    try:
        receiver.codes = [302]
        receiver.location = other.url
        with pytest.raises(OSError, match="redirect"):
            alerts.post_json(receiver.url, b"{}")
        assert other.posts == []
    finally:
        other.close()
    config = load_config(None, {"roots": [str(tmp_path / "in")], "bundle": "demo", "state_dir": str(tmp_path / "state"),
                                "alerts.webhook_url": "http://127.0.0.1:9/", "alerts.max_age_h": 0.0001},
                         env={}, check_paths=False)
    with JobStore(tmp_path / "jobs.sqlite3") as store:
        store.add_alert("series_failed", "k", 1.0, "{}")
        alerter = alerts.Alerter(config, store, threading.Event(), since=time.time(), disks=[])
        assert alerter.send_due() == 0
        assert store.alerts()[0].state == "pending"
        assert alerter.send_due(now=time.time() + 3600) == 0
        assert store.alerts()[0].state == "failed"


def test_webhook_url_must_be_http(make_config) -> None:
    from edgeseg.errors import ConfigError

    with pytest.raises(ConfigError, match="alerts.webhook_url"):
        make_config(**{"alerts.webhook_url": "file:///etc/passwd"})
