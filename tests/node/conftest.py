"""Fixtures of the DICOM node tests (the shared pieces are in node_helpers.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from node_helpers import Listener


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    """A listener that accepts MR_CONSOLE, writing into tmp_path/root."""
    lst = Listener(tmp_path / "root")
    lst.receiver.start()
    try:
        yield lst
    finally:
        lst.receiver.stop()
