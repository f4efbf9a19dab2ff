"""Shared benchmark plumbing: machine record, child-process peak RSS, tables and JSON.

Each measured configuration runs in its own child process so its peak RSS (``getrusage``) is its own.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for mod in ("openvino", "numpy", "scipy", "torch", "nncf", "nnunetv2"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    try:
        import openvino as ov

        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001
        caps = []
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "cpu_capabilities": list(caps),
            "platform": platform.platform(), "versions": versions,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_child(args: Sequence[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    """Run ``python args...`` whose last stdout line is a JSON object (the worker adds its own peak RSS,
    ``peak_rss_mb``, from ``getrusage``). Returns (that object, wall seconds of the whole child)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    last = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")][-1]
    return json.loads(last), wall


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MB.

    Linux's ``VmHWM`` (the high-water mark of this process's own memory map) where there is one: ``getrusage``'s
    ``ru_maxrss`` survives ``exec``, so a child started from a big parent would report at least the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def print_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    widths = [max(len(title), *(len(_fmt(r.get(key))) for r in rows)) for key, title in columns]
    print("  ".join(title.ljust(w) for (_, title), w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(key)).ljust(w) for (key, _), w in zip(columns, widths)))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 10 else f"{v:.4f}" if abs(v) < 1 else f"{v:.3f}"
    return str(v)


def write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, default=str))
        print(f"\nJSON written to {path}")
