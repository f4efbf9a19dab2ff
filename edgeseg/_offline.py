"""edgeseg makes no network attempt: OpenVINO's usage telemetry is switched off before openvino is imported.

``import openvino`` imports ``openvino.tools.ovc``, which through the ``openvino_telemetry`` package sends a usage
event to Google Analytics (from a forked process) and writes a client id and a usage counter under ``~/intel/``
(``%LOCALAPPDATA%\\Intel Corporation\\`` on Windows); NNCF does the same when it is imported. Both fall back to
their own no-op stubs when ``openvino_telemetry`` cannot be imported, which is what the frozen build relies on by
leaving the package out (``installer/freeze_manifest.py``). Marking the package as not importable in
``sys.modules`` gives the same in every install, without writing anything anywhere. (The package's own opt-out,
``opt_in_out --opt_out``, writes a consent file into the user's home and itself sends an opt-out event.)

``edgeseg/__init__.py`` calls :func:`disable_openvino_telemetry`, so every ``edgeseg.*`` import is covered before
any edgeseg module can import openvino. Tested by ``tests/test_offline.py``.
"""
from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

TELEMETRY_PACKAGE = "openvino_telemetry"


def disable_openvino_telemetry() -> None:
    """Make ``import openvino_telemetry`` raise ImportError in this process, so that OpenVINO and NNCF use their
    no-op telemetry stubs. Idempotent. Has no effect on a process that already imported the package (a caller
    that imported openvino before edgeseg); that case is logged."""
    loaded = sys.modules.get(TELEMETRY_PACKAGE, None)
    if loaded is not None:
        log.warning("%s was imported before edgeseg (openvino imported first?): OpenVINO telemetry may already "
                    "have been sent. Import edgeseg before openvino.", TELEMETRY_PACKAGE)
        return
    sys.modules[TELEMETRY_PACKAGE] = None  # type: ignore[assignment]  # the import system's "not importable"
