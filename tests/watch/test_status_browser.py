"""The status page of ``edgeseg demo`` (the real demo bundle, the real watcher, as a child process) in a real
headless browser (Debian's chromium): after the demo series, the page shows its row (patient ID, series
description, model, precision, seconds) and its preview, pixel for pixel; the JSON, health and metrics endpoints
of the same watcher over HTTP. Bounded: the demo gets 300 s to reach its result, each browser run 90 s."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from helpers.browser import dump_dom, require_chromium, screenshot
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300


def fetch(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=15) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def demo_page(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """``edgeseg demo --serve-for 240`` running; yields (page address, lines printed so far). Stopped with SIGINT
    (Ctrl+C) at teardown."""
    require_chromium()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESEG_")}
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "-q", "demo", "--serve-for", "240",
                             "--quiet-period", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=tmp_path)
    lines: list[str] = []
    got: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            got.put(line)
        got.put(None)

    threading.Thread(target=read, daemon=True).start()
    url = None
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while url is None and time.monotonic() < deadline:
            try:
                line = got.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            lines.append(line)
            if "open it now" in line:  # the demo's last words: the page's address while it still runs
                found = re.search(r"Status page: (http://127\.0\.0\.1:\d+/)", line)
                url = found.group(1) if found else None
        assert url is not None, "the demo printed no status page address:\n" + "".join(lines)
        assert any(line.startswith(f"Status page: {url} (while the demo runs)") for line in lines)
        yield url, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _find(shot: np.ndarray, image: np.ndarray) -> tuple[int, int] | None:
    """Where ``image`` appears unchanged in ``shot`` (top-left (y, x)), or None. Candidates: the places where the
    screenshot has the colour of the image's pixel whose colour the screenshot has least often."""
    flat_shot = shot.reshape(-1, 3).astype(np.int64)
    codes = (flat_shot[:, 0] << 16) | (flat_shot[:, 1] << 8) | flat_shot[:, 2]
    values, counts = np.unique(codes, return_counts=True)
    seen = dict(zip(values.tolist(), counts.tolist()))
    img = image.astype(np.int64)
    img_codes = (img[..., 0] << 16) | (img[..., 1] << 8) | img[..., 2]
    present = [(seen[c], c) for c in set(np.unique(img_codes).tolist()) if c in seen]
    for _, colour in sorted(present)[:5]:
        ys, xs = np.nonzero(img_codes == colour)
        py, px = int(ys[0]), int(xs[0])
        for pos in np.flatnonzero(codes == colour)[:200]:
            y0, x0 = divmod(int(pos), shot.shape[1])
            y0, x0 = y0 - py, x0 - px
            if y0 < 0 or x0 < 0 or y0 + image.shape[0] > shot.shape[0] or x0 + image.shape[1] > shot.shape[1]:
                continue
            region = shot[y0:y0 + image.shape[0], x0:x0 + image.shape[1]]
            if np.mean(np.all(region == image, axis=-1)) > 0.99:
                return y0, x0
    return None


def test_demo_status_page_in_a_real_browser(demo_page: tuple[str, list[str]], tmp_path: Path) -> None:
    url, _ = demo_page
    # the JSON, health and metrics of the same watcher over HTTP
    code, body = fetch(url + "api/status")
    assert code == 200
    snap = json.loads(body)
    [row] = snap["recent"]
    assert row["state"] == "done" and row["patient_id"] == "EDGESEG-DEMO" and row["preview"] is True
    assert row["description"] == "edgeseg demo abdomen" and row["model"].startswith("edgeseg-demo")
    assert row["precision"] and row["seconds"] > 0
    assert fetch(url + "healthz") == (200, b"ok\n")
    code, body = fetch(url + "metrics")
    metrics = body.decode()
    assert code == 200 and 'edgeseg_series{state="done"} 1' in metrics and "edgeseg_up 1" in metrics
    infer = re.search(r'^edgeseg_stage_seconds_total\{stage="infer"\} (\S+)$', metrics, re.M)
    assert infer is not None and float(infer.group(1)) > 0

    # the DOM as the browser built it: the demo series' row and the preview image element
    dom = dump_dom(url, tmp_path / "profile-dom")
    assert "<td>EDGESEG-DEMO</td>" in dom and "<td>edgeseg demo abdomen</td>" in dom
    assert f"<td>{row['model']}</td>" in dom and f"<td>{row['seconds']:.1f}</td>" in dom
    src = re.search(r'<img id="latest-preview" src="([^"]+)"', dom)
    assert src is not None
    code, png = fetch(url + src.group(1).replace("&amp;", "&").lstrip("/"))
    assert code == 200 and png.startswith(b"\x89PNG")
    preview_file = tmp_path / "preview.png"
    preview_file.write_bytes(png)
    preview = np.asarray(Image.open(preview_file).convert("RGB"))
    assert Path(row["output"], "preview.png").read_bytes() == png  # the result's own preview

    # the screenshot shows the preview pixel for pixel (1 CSS pixel = 1 device pixel), and the row's text
    height, width = preview.shape[:2]
    shot_file = screenshot(url, tmp_path / "page.png", tmp_path / "profile-shot", width + 200, height + 900)
    shot = np.asarray(Image.open(shot_file).convert("RGB"))
    assert shot.std() > 10, "blank screenshot"
    where = _find(shot, preview)
    assert where is not None, f"the preview ({width}x{height}) is not in the screenshot {shot_file}"
    assert len(np.unique(preview.reshape(-1, 3), axis=0)) > 20  # a real overlay, not a flat image
