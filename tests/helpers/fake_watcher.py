"""The edgeseg command line with the fake segmenter in its watcher: a test-only launcher, no product hook.

    python tests/helpers/fake_watcher.py [--delay SECONDS] <edgeseg arguments>    # e.g. -q watch --config FILE

Runs ``edgeseg.cli.main`` (what ``python -m edgeseg`` runs: its logging, signal handling and exit codes) after
replacing the watcher class the commands build with one whose segmenter is
:class:`helpers.fake_segmenter.FakeSegmenter` (``--delay``: seconds inside each series). The kill -9 tests and
the command-line tests that need a watcher process use it.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package

from helpers.fake_segmenter import fake_watcher_class  # noqa: E402

from edgeseg.cli import main  # noqa: E402
from edgeseg.runtime.watch import service  # noqa: E402

SCRIPT = Path(__file__).resolve()


def command(*args: str, delay_s: float = 0.0) -> list[str]:
    """The argument list that runs this launcher with ``args`` (edgeseg's arguments) in a new Python process."""
    return [sys.executable, str(SCRIPT), "--delay", str(delay_s), *args]


def run(argv: list[str]) -> int:
    delay_s = 0.0
    if argv[:1] == ["--delay"]:
        delay_s, argv = float(argv[1]), argv[2:]
    service.Watcher = fake_watcher_class(delay_s)  # type: ignore[misc]
    return main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
