"""A real headless browser for the status page tests: Debian's ``chromium`` (installed by tools/run_tests.sh), run
as a child process with a private profile, no network beyond the page asked for, and a time limit.

:func:`require_chromium` skips a test when it is missing, with a reason the unexpected-skip gate reports.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

#: the flags of every run: headless, no sandbox (tests may run as root in containers), no first-run work, none of
#: Chromium's own network traffic (updates, sync, translation), device pixels = CSS pixels
_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-extensions", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider",
    "--hide-scrollbars", "--force-device-scale-factor=1", "--mute-audio",
)
TIMEOUT_S = 90


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    found = chromium_binary()
    if found is None:
        pytest.skip("chromium is not installed (Debian package chromium: tools/run_tests.sh installs it)")
    return found


def _run(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = require_chromium()
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run([binary, *_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)


def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM after it loaded (``--dump-dom``)."""
    done = _run(profile, "--dump-dom", url)
    assert done.returncode == 0, f"chromium --dump-dom failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def screenshot(url: str, out: Path, profile: Path, width: int, height: int) -> Path:
    """A PNG screenshot of the page at ``width`` x ``height`` CSS (= device) pixels."""
    done = _run(profile, f"--screenshot={out}", f"--window-size={width},{height}", url)
    assert done.returncode == 0 and out.is_file(), \
        f"chromium --screenshot failed ({done.returncode}): {done.stderr[-2000:]}"
    return out
