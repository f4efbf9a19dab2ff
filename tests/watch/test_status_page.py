"""The status page of a running watcher over real HTTP (standard library client, loopback): ``/``, ``/api/status``,
``/healthz``, ``/metrics``, ``/preview``; the token on a non-loopback bind; patient data escaped. The fake
segmenter (no model): the page in a real browser with the real demo is ``test_status_browser.py``."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pydicom import dcmread
from watch_helpers import wait_for, write_series

from edgeseg.errors import ConfigError
from edgeseg.runtime.watch.status_page import REQUEST_TIMEOUT_S
from edgeseg.runtime.watch.store import JobStore

HOSTILE_ID = '<script>alert("x")</script>&'
TOKEN = "a-very-long-status-token-0123456789"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def hostile_series(folder: Path, **kwargs: Any) -> list[Path]:
    """A small series whose PatientID and AccessionNumber are HTML."""
    files = write_series(folder, description="T1 <b>strong</b>", **kwargs)  # (not "bold": a BOLD series is skipped)
    for f in files:
        ds = dcmread(f)
        ds.PatientID = HOSTILE_ID
        ds.AccessionNumber = "ACC<i>1"
        ds.save_as(f)
    return files


def page_url(watcher: Any, path: str = "/") -> str:
    host, port = watcher.status_page.address
    return f"http://127.0.0.1:{port}{path}"


def test_page_json_health_metrics_over_http(start_watcher, roots: Path) -> None:
    hostile_series(roots / "p1" / "s1")
    w = start_watcher(**{"status_page.enabled": True, "status_page.port": 0})
    assert w.status_page is not None and w.status_page.url.startswith("http://127.0.0.1:")
    assert wait_for(lambda: w.stats["done"] == 1, timeout=30)

    code, headers, body = get(page_url(w, "/api/status"))
    assert code == 200 and headers["Content-Type"] == "application/json"
    snap = json.loads(body)
    [row] = snap["recent"]
    assert row["state"] == "done" and row["patient_id"] == HOSTILE_ID and row["accession"] == "ACC<i>1"
    assert row["description"] == "T1 <b>strong</b>" and row["seconds"] is not None and row["preview"] is False
    assert snap["counts"]["done"] == 1 and snap["watcher"]["healthy"] is True
    assert snap["disk"]["paths"] and snap["disk"]["paths"][0]["free_bytes"] > 0
    # the retention policy and doctor's disk forecast (one line per root)
    assert "received images" in snap["disk"]["retention"] and len(snap["disk"]["forecast"]) == len(w.config.roots)
    assert "MB free" in snap["disk"]["forecast"][0]

    code, headers, body = get(page_url(w))
    page = body.decode()
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert HOSTILE_ID not in page and "<script" not in page and "<b>strong" not in page and "<i>1" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page and "ACC&lt;i&gt;1" in page
    assert "Retention: " in page and "MB free" in page

    code, _, body = get(page_url(w, "/healthz"))
    assert (code, body) == (200, b"ok\n")

    code, headers, body = get(page_url(w, "/metrics"))
    metrics = body.decode()
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'edgeseg_series{state="done"} 1' in metrics and "edgeseg_up 1" in metrics
    assert 'edgeseg_series_outcomes_total{outcome="done"} 1' in metrics
    assert "edgeseg_received_instances_total 0" in metrics
    assert f'edgeseg_free_bytes{{path="{roots}"}}' in metrics
    assert all(line.startswith(("# HELP edgeseg_", "# TYPE edgeseg_", "edgeseg_")) for line in metrics.splitlines())

    # a preview only from a result's own folder: the fake writes none, and no key reaches another file
    assert get(page_url(w, "/preview?key=" + quote(row["key"], safe="")))[0] == 404
    assert get(page_url(w, "/preview?key=" + quote("/etc/passwd", safe="")))[0] == 404
    assert get(page_url(w, "/../../etc/passwd"))[0] == 404
    assert get(page_url(w, "/nothing"))[0] == 404

    # a stale heartbeat (or a dead thread) is unhealthy
    assert w.heartbeat is not None
    w.heartbeat.last_beat_at = 1.0
    code, _, body = get(page_url(w, "/healthz"))
    assert code == 503 and b"last heartbeat" in body
    url = page_url(w, "/healthz")
    w.stop()
    with pytest.raises(OSError):
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5)


def test_preview_served_from_the_result_folder_only(start_watcher, roots: Path) -> None:
    """A preview.png in the result folder is served as image/png; a symbolic link named preview.png is not."""
    write_series(roots / "p2" / "s1")
    w = start_watcher(**{"status_page.enabled": True, "status_page.port": 0})
    assert wait_for(lambda: w.stats["done"] == 1, timeout=30)
    [row] = json.loads(get(page_url(w, "/api/status"))[2])["recent"]
    out = Path(row["output"])
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 32
    (out / "preview.png").write_bytes(png)
    url = page_url(w, "/preview?key=" + quote(row["key"], safe=""))
    code, headers, body = get(url)
    assert (code, headers["Content-Type"], body) == (200, "image/png", png)
    (out / "preview.png").unlink()
    secret = out.parent / "secret.png"
    secret.write_bytes(b"secret")
    (out / "preview.png").symlink_to(secret)
    assert get(url)[0] == 404


def test_token_required_on_a_non_loopback_bind(start_watcher, make_config, roots: Path) -> None:
    with pytest.raises(ConfigError, match="status_page.token"):
        make_config(**{"status_page.enabled": True, "status_page.bind_address": "0.0.0.0"})
    w = start_watcher(**{"status_page.enabled": True, "status_page.port": 0, "status_page.bind_address": "0.0.0.0",
                         "status_page.token": TOKEN})
    for path in ("/", "/api/status", "/metrics", "/preview?key=x"):
        code, _, body = get(page_url(w, path))
        assert code == 401 and b"token" in body, path
    assert get(page_url(w, "/api/status?token=wrong"))[0] == 401
    assert get(page_url(w, "/healthz"))[0] in (200, 503)  # for monitors: no patient data, no token
    assert get(page_url(w, "/api/status"), {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    code, headers, _ = get(page_url(w, f"/?token={TOKEN}"))
    assert code == 200 and headers["Set-Cookie"].startswith(f"edgeseg_token={TOKEN}; Path=/; HttpOnly")
    assert get(page_url(w, "/metrics"), {"Cookie": f"edgeseg_token={TOKEN}"})[0] == 200


def test_a_silent_client_cannot_hold_the_page(start_watcher, monkeypatch) -> None:
    """Connections that send nothing are closed after the request timeout (those beyond MAX_CONNECTIONS at once);
    then the page answers again."""
    import socket

    import edgeseg.runtime.watch.status_page as status_page

    monkeypatch.setattr(status_page, "REQUEST_TIMEOUT_S", 1.0)
    w = start_watcher(**{"status_page.enabled": True, "status_page.port": 0})
    _, port = w.status_page.address
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(status_page.MAX_CONNECTIONS + 4)]
    try:
        assert wait_for(lambda: all(s.recv(1) == b"" for s in idle), timeout=REQUEST_TIMEOUT_S)
        assert get(page_url(w, "/healthz"))[0] == 200
    finally:
        for s in idle:
            s.close()


def test_status_page_port_in_use_fails_the_start(make_config, segmenter) -> None:
    import socket

    from edgeseg.runtime.watch.service import Watcher

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        w = Watcher(make_config(**{"status_page.enabled": True, "status_page.port": port}), segmenter)
        with pytest.raises(ConfigError, match="status_page.port"):
            w.start()
    assert not w.alive()


def test_status_command_shows_the_human_columns(start_watcher, roots: Path, tmp_path: Path, capsys) -> None:
    from edgeseg.cli import main

    hostile_series(roots / "p3" / "s1")
    w = start_watcher()
    assert wait_for(lambda: w.stats["done"] == 1, timeout=30)
    w.stop()
    config_file = tmp_path / "watch_config.yaml"
    config_file.write_text(f"roots: [{roots}]\nbundle: demo\nstate_dir: {tmp_path / 'state'}\n", encoding="utf-8")
    assert main(["status", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("UPDATED"))
    for column in ("STATE", "PATIENT ID", "ACCESSION", "SERIES", "MODEL", "PRECISION", "SECONDS"):
        assert column in header
    assert HOSTILE_ID in out and "ACC<i>1" in out and "T1 <b>strong</b>" in out


def test_an_older_store_gets_the_new_columns(tmp_path: Path) -> None:
    """A schema-3 store (no result facts, no alerts table) is migrated in place; its rows are kept."""
    import sqlite3

    path = tmp_path / "jobs.sqlite3"
    with JobStore(path) as store:
        store.discover("k1", "dicom", tmp_path, "n1", description="d1")
    db = sqlite3.connect(path)
    db.execute("DROP TABLE alerts")
    for column in ("patient_id", "accession", "model", "precision"):
        db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    db.execute("PRAGMA user_version=3")
    db.commit()
    db.close()
    with JobStore(path, readonly=True) as store:  # `edgeseg status` on an old store, before any watcher opened it
        [row] = store.rows()
        assert row.patient_id is None and store.alerts() == []
    with JobStore(path) as store:
        store.set_facts("k1", patient_id="P1", model="m", precision="fp16")
        [row] = store.rows()
        assert (row.key, row.description, row.patient_id, row.model, row.precision) == ("k1", "d1", "P1", "m", "fp16")
        assert store.add_alert("e", "s", 1.0, "{}") and not store.add_alert("e", "s", 1.0, "{}")
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 4




def test_the_page_uses_the_listeners_tls_certificate(start_watcher, tmp_path: Path) -> None:
    """With dicom_listener.tls_certificate/tls_key the page is HTTPS with that certificate; plain HTTP gets nothing."""
    import ssl
    import subprocess

    key, cert = tmp_path / "server.key", tmp_path / "server.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    w = start_watcher(**{"status_page.enabled": True, "status_page.port": 0,
                         "dicom_listener.tls_certificate": str(cert), "dicom_listener.tls_key": str(key)})
    assert w.status_page.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    with opener.open(w.status_page.url + "api/status", timeout=10) as answer:
        assert answer.status == 200 and json.loads(answer.read())["counts"]
    with pytest.raises(OSError):
        get(page_url(w, "/healthz"))  # plain HTTP to the TLS port


def test_running_series_with_progress(start_watcher, roots: Path) -> None:
    """While a series runs, the page and /api/status show it with the segmenter's last stage and fraction, and the
    queue; the metrics count it as running."""
    from watch_helpers import CountingSegmenter

    hostile_series(roots / "p4" / "s1")
    w = start_watcher(segment=CountingSegmenter(delay_s=4.0), **{"status_page.enabled": True, "status_page.port": 0})

    def running() -> list[dict[str, Any]]:
        return json.loads(get(page_url(w, "/api/status"))[2])["running"]

    assert wait_for(lambda: any(r.get("stage") == "infer" and r["fraction"] > 0 for r in running()), timeout=30)
    [item] = running()
    assert item["patient_id"] == HOSTILE_ID and item["state"] == "running" and item["running_for_s"] >= 0
    page = get(page_url(w))[2].decode()
    assert "<progress max=\"1\" value=" in page and "&lt;script&gt;" in page
    assert "edgeseg_running_series 1" in get(page_url(w, "/metrics"))[2].decode()


@pytest.mark.parametrize("token", ["short", "a token with spaces in it ok?", "x" * 15 + ";"])
def test_a_weak_or_unusable_token_is_refused(make_config, token: str) -> None:
    with pytest.raises(ConfigError, match="status_page.token"):
        make_config(**{"status_page.enabled": True, "status_page.token": token})


def test_edgeseg_watch_refuses_to_start_without_the_token(tmp_path: Path, roots: Path, capsys) -> None:
    """Through the command line: exit 2 (configuration), the message names the key and the fix; nothing listens."""
    from edgeseg.cli import main

    config_file = tmp_path / "watch_config.yaml"
    config_file.write_text(f"roots: [{roots}]\nbundle: demo\nstate_dir: {tmp_path / 'state'}\nbundle: {tmp_path}\n"
                           "status_page:\n  enabled: true\n  bind_address: 0.0.0.0\n", encoding="utf-8")
    assert main(["-q", "watch", "--config", str(config_file)]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert "status_page.token" in err and "Fix: set status_page.token" in err
    assert not (tmp_path / "state" / "jobs.sqlite3").exists()
